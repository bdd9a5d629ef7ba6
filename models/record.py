"""What every kind of data shares: a record as one side reports it, and its hash.

A kind (contacts, later mail and calendar) has its own canonical model; the sync
core handles any of them through these generic shapes. `SideRecord[Contact]` is a
contact as Google or the CRM reports it; `SideRecord[Message]` will be a message.
Validate stored JSON with the parametrised class (`SideRecord[Contact]`): the bare
class leaves the content as the plain dict it was given.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

Side = Literal["mailbox", "platform"]
SIDES: tuple[Side, Side] = ("mailbox", "platform")

T = TypeVar("T")


def other_side(side: Side) -> Side:
    return "platform" if side == "mailbox" else "mailbox"


def content_hash(content: BaseModel) -> str:
    """Stable digest of a record's content; recognises our own writes echoing back."""
    # Fields at their default are left out, so adding a field to a canonical model does
    # not change the hash of every record already synced (which would look like an edit
    # on both sides of every link).
    payload = json.dumps(content.model_dump(mode="json", exclude_defaults=True), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class SideRecord(BaseModel, Generic[T]):
    """One record as one side reports it: its id there, its content, or a tombstone."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    side: Side
    external_id: str
    #: the canonical content; stores written before kinds existed call it "contact"
    content: T | None = Field(default=None, validation_alias=AliasChoices("content", "contact"))
    deleted: bool = False
    etag: str | None = None
    #: the provider's modification time, when it reports one (for the newest-wins policy)
    updated_at: float | None = None
    #: ids this record was known by before (People `previousResourceNames`)
    previous_ids: tuple[str, ...] = ()
    #: owner on the platform side (for scoping which platform records reach a mailbox)
    owner: str | None = None
    #: what the connector could not translate (malformed input): field names and kinds, no values
    problems: tuple[str, ...] = ()


def json_of(content: Any) -> Any:
    return content.model_dump(mode="json") if isinstance(content, BaseModel) else content
