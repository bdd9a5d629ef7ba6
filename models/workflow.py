"""What crosses workflow history: ids, counts, cursors' ages and statuses. Never content.

Every model here is checked by tests/test_history_privacy.py indirectly: a sync
runs and its whole history is scanned for the seeded names and addresses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Health = Literal["active", "paused", "needs_reauth", "blocked", "disconnected"]


class CycleRef(BaseModel):
    connection_id: str
    cycle_id: str


class FetchResult(BaseModel):
    stream: str
    fetched: int = 0
    pages: int = 0
    full_resync: bool = False
    #: tombstones staged for linked items a full resync no longer saw
    vanished: int = 0
    calls: int = 0


class PlanSummary(BaseModel):
    planned: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict)
    rules: dict[str, int] = Field(default_factory=dict)
    guard_tripped: bool = False
    held_deletes: int = 0


class WriteSummary(BaseModel):
    created: dict[str, int] = Field(default_factory=dict)
    updated: dict[str, int] = Field(default_factory=dict)
    deleted: dict[str, int] = Field(default_factory=dict)
    linked: int = 0
    unlinked: int = 0
    applied: int = 0
    rejected: int = 0
    deferred: int = 0
    calls: dict[str, int] = Field(default_factory=dict)


class RejectionSummary(BaseModel):
    fixed: int = 0
    quarantined: int = 0


class QuarantinedItem(BaseModel):
    item_id: int
    side: str
    error_code: str


class StoreSummary(BaseModel):
    items: dict[str, int] = Field(default_factory=dict)
    open_conflicts: list[int] = Field(default_factory=list)
    open_duplicates: list[int] = Field(default_factory=list)
    quarantined: list[QuarantinedItem] = Field(default_factory=list)
    links: int = 0


class CycleCounts(BaseModel):
    """Per-stage counts of the last cycle, as the state query shows them."""

    fetched: int = 0
    linked: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    conflicts: int = 0
    duplicates: int = 0
    quarantined: int = 0
    fixed: int = 0
    deferred: int = 0
    full_resyncs: int = 0


class Resolution(BaseModel):
    """A person's answer to a review. Merged field values are stored first (claim check);
    the signal carries only the review id and the choice."""

    review_id: int
    choice: Literal["mailbox", "platform", "merged", "link", "create", "ignore"]


class SyncState(BaseModel):
    connection_id: str
    health: Health = "active"
    cycles: int = 0
    last_cycle_at: float | None = None
    last_fetch_at: float | None = None
    cursor_age_s: float | None = None
    next_poll_at: float | None = None
    wakeups_pending: int = 0
    last_counts: CycleCounts = Field(default_factory=CycleCounts)
    totals: CycleCounts = Field(default_factory=CycleCounts)
    store: StoreSummary = Field(default_factory=StoreSummary)
    pending_resolutions: int = 0
    guard_tripped: bool = False
    last_error: str | None = None
    continued_as_new: int = 0
    #: what the last subscription upkeep did (counts), and why it failed if it did
    subscriptions: dict[str, int] = Field(default_factory=dict)
    subscription_error: str | None = None


class MailboxSyncInput(BaseModel):
    connection_id: str
    org_id: str
    provider: str
    poll_interval_s: float = 300.0
    #: how soon a lost worker's activity is retried elsewhere (activities heartbeat per page/chunk)
    heartbeat_timeout_s: float = 60.0
    kinds: list[str] = Field(default_factory=lambda: ["contacts"])
    #: carried over by continue-as-new
    state: SyncState | None = None
    wake: bool = True
    paused: bool = False
    resolutions: list[Resolution] = Field(default_factory=list)
    retry_quarantined: bool = False
    approve_mass_delete: bool = False
