"""What the pure planner decides, and what the executor carries out.

These are pydantic models because decisions are persisted (as action rows) between
the plan and write activities: a retried write activity re-reads them from the
store, never from workflow history.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, Field

from models.record import Side

T = TypeVar("T")

Outcome = Literal["apply", "skip", "conflict", "duplicate", "quarantine", "held"]
Op = Literal["create", "update", "delete"]


class Write(BaseModel, Generic[T]):
    side: Side
    op: Op
    external_id: str | None = None
    #: decisions stored before kinds existed call it "contact"
    content: T | None = Field(default=None, validation_alias=AliasChoices("content", "contact"))
    etag: str | None = None
    #: fields this write leaves as the side holds them (a direction keeps them there, or
    #: the merge did not change them); `custom:<name>` names one custom field
    keep: list[str] = []


class Decision(BaseModel, Generic[T]):
    """The fate of one item (a linked pair, or one unlinked record) in one cycle.

    Generic over the kind's content model; a stored decision is read back with its
    kind's class (`Decision[Contact]`), never the bare one.
    """

    outcome: Outcome
    #: named rule or reason, e.g. "echo_of_own_write", "linked_by_similarity"
    rule: str
    mailbox_id: str | None = None
    platform_id: str | None = None
    link_id: int | None = None
    #: create or keep a link between mailbox_id and platform_id once writes succeed
    link: bool = False
    #: remove the link once writes succeed
    unlink: bool = False
    writes: list[Write[T]] = []
    #: the new common base once every write succeeded
    snapshot: T | None = None
    #: conflicting field names (conflict) / problems (quarantine); never values
    fields: list[str] = []
    problems: list[str] = []
    #: fields whose change a direction kept from the other side (never values)
    blocked: list[str] = []
    #: duplicate review: the candidate on the other side and its score
    candidate_side: Side | None = None
    candidate_id: str | None = None
    score: float | None = None
    #: review this decision answers or keeps open
    review_id: int | None = None
    #: previous mailbox id when the provider renamed the item (People previousResourceNames)
    renamed_from: str | None = None
    #: latest etags/versions known for each side (kept on the link when nothing is written)
    mailbox_etag: str | None = None
    platform_etag: str | None = None

    def item_keys(self) -> list[tuple[Side, str]]:
        keys: list[tuple[Side, str]] = []
        if self.mailbox_id:
            keys.append(("mailbox", self.mailbox_id))
        if self.platform_id:
            keys.append(("platform", self.platform_id))
        return keys
