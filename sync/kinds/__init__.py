"""A kind of data, as the pure sync core sees it: its model and its rules.

The planner and the executor are written once, against `KindRules`; a kind
(contacts, later mail and calendar) supplies what differs: its canonical model,
what makes a record malformed, how records are compared and indexed for
duplicate search, how a field-level merge treats its fields, and which named
fixes answer a platform's validation error. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Collection, Generic, Hashable, Protocol, TypeVar

from models.plan import Decision
from models.record import SideRecord, content_hash
from sync.matching import Match, MatchScore, Thresholds
from sync.merge import MergeResult, three_way_merge
from sync.fields import Aligned
from sync.policy import Policy, SyncSettings

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class MatchIndex(Protocol[K]):
    """Records indexed for duplicate search: add them, then ask for the best one like another."""

    def add(self, key: K, content: Any) -> None: ...

    def best(self, content: Any, thresholds: Thresholds, *, exclude: Collection[K] = ()) -> Match[K]: ...


def _no_fix(content: Any, field: str | None, rules: tuple[str, ...]) -> tuple[Any, list[str]] | None:
    return None


def _as_is(base: Any, mailbox: Any, platform: Any, settings: SyncSettings, mailbox_holds: Any) -> Aligned:
    return Aligned(mailbox, platform, (), mailbox, platform)


@dataclass(frozen=True)
class KindRules(Generic[T]):
    name: str
    #: the canonical model: a frozen pydantic model of str and tuple[str, ...] fields
    model: type
    #: what makes a record unusable, as value-free messages naming the field
    problems: Callable[[Any, SyncSettings], list[str]]
    #: blocking keys: records sharing one may be duplicates (candidate search, the mirror)
    keys: Callable[[Any], set[str]]
    #: an empty index for duplicate search within a batch and against candidates
    new_index: Callable[[], MatchIndex]
    #: how alike two records are, in [0, 1]
    score: Callable[[Any, Any], MatchScore]
    #: named fixes for a platform's validation error on `field` (None: no rule applies)
    fix: Callable[[Any, str | None, tuple[str, ...]], tuple[Any, list[str]] | None] = field(default=_no_fix)
    #: both sides as the merge should see them, and the fields a direction blocked
    #: (contacts: `sync.fields.align`); the default takes them as reported
    align: Callable[[Any, Any, Any, SyncSettings, Any], Aligned] = field(default=_as_is)
    #: fields a write to a side leaves as that side holds them
    keep: Callable[[str, Any, Any, SyncSettings], tuple[str, ...]] = field(default=lambda side, base, merged, settings: ())
    #: a record as created on the other side (fields that do not flow there left empty)
    outbound: Callable[[Any, str, SyncSettings], Any] = field(default=lambda content, target, settings: content)
    #: whether writing `merged` minus the kept fields changes what a side holds
    differs: Callable[[Any, Any, tuple[str, ...]], bool] = field(default=lambda seen, merged, keep: seen != merged)
    #: fields a person settles when both sides changed them, whatever the policy (see sync.merge)
    manual_fields: tuple[str, ...] = ()
    #: whether two new records on one side can be duplicates of each other (contacts: a
    #: mailbox holding one person twice); a calendar's events are distinct by their UID
    twins_within_side: bool = True
    #: these rules as an organisation's settings adjust them (e.g. the region phone numbers
    #: are read in, which changes blocking keys and scores); None: settings change nothing
    bind: Callable[["KindRules", SyncSettings], "KindRules"] | None = None
    #: the format of `keys`: bump it whenever a key's format changes, so keys stored by
    #: an earlier release are recomputed (activities/org.py) instead of never being met
    keys_version: str = ""
    #: the settings `keys` depends on, as a short value-free text (e.g. "region=GB"):
    #: a change re-keys what is stored, like a new `keys_version`
    keys_settings: Callable[[SyncSettings], str] = field(default=lambda settings: "")

    def for_settings(self, settings: SyncSettings) -> "KindRules":
        """The rules for one organisation: keys, scores and indexes must all be computed
        the same way, or a record's stored keys would not meet its duplicate's."""
        return self.bind(self, settings) if self.bind is not None else self

    def keys_stamp(self, settings: SyncSettings) -> str:
        """What stored keys must have been computed with to meet today's: the key formats
        and the settings that change them."""
        return f"{self.name}:{self.keys_version};{self.keys_settings(settings)}"

    def hash(self, content: Any) -> str:
        return content_hash(content)

    def merge(self, base: Any, mailbox: Any, platform: Any, policy: Policy, *, mailbox_time: float | None = None,
              platform_time: float | None = None, decided: dict | None = None) -> MergeResult:
        return three_way_merge(base, mailbox, platform, policy, mailbox_time=mailbox_time,
                               platform_time=platform_time, decided=decided, manual_fields=self.manual_fields)

    @cached_property
    def record(self) -> type[SideRecord]:
        """`SideRecord[model]`: reads a staged record back with its content typed."""
        return SideRecord[self.model]  # type: ignore[name-defined]

    @cached_property
    def decision(self) -> type[Decision]:
        return Decision[self.model]  # type: ignore[name-defined]
