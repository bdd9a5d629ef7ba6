"""What crosses workflow history: ids, counts, cursors' ages and statuses. Never content.

Every model here is checked by tests/test_history_privacy.py indirectly: a sync
runs and its whole history is scanned for the seeded names and addresses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

#: active: syncing; paused: by a person; needs_reauth: waits for the user to reconnect;
#: blocked: the mass-delete guard holds deletions for approval; failing: cycles fail and
#: are retried with backoff (last_error says why; some need an operator); stopped: the
#: run was cancelled; disconnected: tokens revoked, nothing syncs.
Health = Literal["active", "paused", "needs_reauth", "blocked", "failing", "stopped", "disconnected"]

#: Lists that grow with the store (open reviews, quarantined items) are cut to this many
#: ids wherever they cross history (activity results, the state query, continue-as-new);
#: their full length travels as a count and the rest is read from the store.
STATE_ID_LIMIT = 20


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
    """What the store holds for a connection: counts, and the first ids of each list
    (at most STATE_ID_LIMIT; `concord reviews` / `concord quarantine` list them all)."""

    items: dict[str, int] = Field(default_factory=dict)
    open_conflicts: list[int] = Field(default_factory=list)
    open_duplicates: list[int] = Field(default_factory=list)
    quarantined: list[QuarantinedItem] = Field(default_factory=list)
    links: int = 0
    open_conflict_count: int = 0
    open_duplicate_count: int = 0
    quarantined_count: int = 0
    #: codes of all quarantined items, counted (not cut like the id list)
    quarantined_by_code: dict[str, int] = Field(default_factory=dict)
    #: items skipped, by the named rule that skipped them (mail: bulk, internal_only, ...)
    skipped_by_rule: dict[str, int] = Field(default_factory=dict)
    #: logged messages whose association waits for a person (mail)
    open_association_count: int = 0
    #: the platform's outbox items this mailbox sends, by state (send)
    outbox: dict[str, int] = Field(default_factory=dict)


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


Choice = Literal["mailbox", "platform", "merged", "link", "create", "ignore", "attach"]
#: which answers fit which kind of review
CHOICES_BY_REVIEW_KIND: dict[str, tuple[str, ...]] = {
    "conflict": ("mailbox", "platform", "merged"),
    "duplicate": ("link", "create", "ignore"),
    #: a logged message whose association is ambiguous: attach every option, or none
    "association": ("attach", "ignore"),
}


#: "link" joins a held record to its candidate; only a possible duplicate between an
#: unlinked pair can be joined (a candidate already linked, or a twin on the same side,
#: would be linked twice). The others are kept apart or ignored.
LINKABLE_RULES = ("possible_duplicate",)


def allowed_answers(kind: str, rule: str | None) -> tuple[str, ...]:
    """The answers that can settle a review of this kind, opened by this planner rule."""
    choices = CHOICES_BY_REVIEW_KIND.get(kind, ())
    if kind == "duplicate" and rule not in LINKABLE_RULES:
        return tuple(c for c in choices if c != "link")
    return choices


class Resolution(BaseModel):
    """A person's answer to a review. Merged field values are stored first (claim check);
    the signal carries only the review id and the choice."""

    review_id: int
    choice: Choice


class AnswerOutcome(BaseModel):
    """The reply to the `answer_review` update: whether the answer was taken."""

    accepted: bool
    #: why not, as a short code: unknown_review, other_connection, not_open, choice_does_not_fit
    reason: str | None = None


#: the order kinds run in within a cycle (contacts first: mail and calendar associate
#: with the people it links); a kind not named here runs after these, as configured
KIND_ORDER: tuple[str, ...] = ("contacts", "mail", "send", "calendar")


def ordered_kinds(kinds: list[str]) -> list[str]:
    unique = list(dict.fromkeys(kinds))
    known = [k for k in KIND_ORDER if k in unique]
    return known + [k for k in unique if k not in KIND_ORDER]


class KindState(BaseModel):
    """One kind's section of the state query."""

    last_fetch_at: float | None = None
    cursor_age_s: float | None = None
    last_counts: CycleCounts = Field(default_factory=CycleCounts)
    totals: CycleCounts = Field(default_factory=CycleCounts)
    store: StoreSummary = Field(default_factory=StoreSummary)
    #: why this kind's last cycle failed (class and type), None when it succeeded
    last_error: str | None = None
    guard_tripped: bool = False


#: cycles (and their durations) kept for the "recent" figures of HealthMetrics
HEALTH_WINDOW = 20
#: item states that need nothing more: both sides agree (applied) or a rule left it out
FINAL_ITEM_STATES = ("applied", "skipped")


class HealthMetrics(BaseModel):
    """Sync health, computed by the workflow from what it already has: workflow.now()
    around each cycle and the counts its activities return. Carried by continue-as-new,
    so "over the run" means since the connection's workflow first started."""

    cycles_attempted: int = 0
    cycles_succeeded: int = 0
    #: succeeded / attempted, over the run and over the last HEALTH_WINDOW cycles
    completion_rate: float | None = None
    recent_completion_rate: float | None = None
    #: the last HEALTH_WINDOW outcomes, oldest first (True: succeeded)
    recent_outcomes: list[bool] = Field(default_factory=list)
    #: items the store holds for the connection (every item a cycle has processed)
    items_processed: int = 0
    #: quarantined items by error code / items processed
    error_rate_by_code: dict[str, float] = Field(default_factory=dict)
    #: items in a final state (applied, skipped) / all items; links whose both sides exist
    consistency: float | None = None
    links: int = 0
    #: start of the first failing cycle of the current failure, None when not failing
    failure_started_at: float | None = None
    #: first failing cycle's start -> the end of the next successful cycle, in seconds
    last_recovery_s: float | None = None
    max_recovery_s: float | None = None
    recoveries: int = 0
    #: wall time of each cycle (workflow time: its first task to its last), in seconds
    last_cycle_s: float | None = None
    recent_cycle_s: list[float] = Field(default_factory=list)
    mean_recent_cycle_s: float | None = None
    #: last / mean of recent (above 1: slower than usual), and the least-squares slope
    #: of the recent durations in seconds per cycle (positive: cycles are getting slower)
    cycle_trend_ratio: float | None = None
    cycle_slope_s: float | None = None


class SyncState(BaseModel):
    """The connection's live state. `last_counts`, `totals` and `store` sum every kind;
    `kinds` has each kind's own section."""

    connection_id: str
    health: Health = "active"
    cycles: int = 0
    last_cycle_at: float | None = None
    last_fetch_at: float | None = None
    cursor_age_s: float | None = None
    next_poll_at: float | None = None
    wakeups_pending: int = 0
    #: a cycle is under way (its counts land in `last_counts` when it ends)
    cycle_running: bool = False
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
    #: cycles failed in a row, when that began, and when the next attempt runs
    consecutive_failures: int = 0
    failing_since: float | None = None
    next_retry_at: float | None = None
    #: answers to reviews the store refused (unknown, another connection's, already
    #: answered, or a choice that does not fit the review)
    ignored_answers: int = 0
    kinds: dict[str, KindState] = Field(default_factory=dict)
    #: completion rate, error rates by code, consistency, recovery time, cycle durations
    health_metrics: HealthMetrics = Field(default_factory=HealthMetrics)


class MailboxSyncInput(BaseModel):
    connection_id: str
    org_id: str
    provider: str
    poll_interval_s: float = 300.0
    #: how soon a lost worker's activity is retried elsewhere (activities heartbeat per page/chunk)
    heartbeat_timeout_s: float = 60.0
    #: attempts an activity gets within one cycle; after them the cycle fails and the
    #: workflow retries the whole cycle with its own capped backoff (rate limits are
    #: waited out inside the activity and spend none)
    activity_attempts: int = 8
    #: the longest backoff between two attempts of an activity (it doubles from 1 s)
    activity_retry_max_s: float = 120.0
    kinds: list[str] = Field(default_factory=lambda: ["contacts"])
    #: carried over by continue-as-new
    state: SyncState | None = None
    wake: bool = True
    paused: bool = False
    resolutions: list[Resolution] = Field(default_factory=list)
    retry_quarantined: bool = False
    approve_mass_delete: bool = False


# --- the organisation's workflow -------------------------------------------------------


class OrgReadResult(BaseModel):
    """What one read of an organisation's platform feed did (one kind)."""

    changes: int = 0
    pages: int = 0
    calls: int = 0
    #: the mailboxes the changes concern: only these are woken
    woken: list[str] = Field(default_factory=list)
    #: mailboxes of the organisation still syncing (None: not reported by an older worker,
    #: or the store holds no mailbox of it)
    active_mailboxes: int | None = None
    #: stored blocking keys (links and mirrored records) recomputed for today's key
    #: formats or settings before the read (0 but after an upgrade or a region change)
    rekeyed: int = 0


class OrgKindState(BaseModel):
    """One kind's section of the organisation's state: its platform reads and whom they woke."""

    last_read_at: float | None = None
    #: reads of the feed, the changes they numbered, the platform calls they made
    reads: int = 0
    changes: int = 0
    platform_calls: int = 0
    #: mailbox wake-ups sent, in all and by the last read
    wakes: int = 0
    last_woken: int = 0
    failures: int = 0
    #: why the last read failed (class and type), None when it succeeded
    last_error: str | None = None


class OrgState(BaseModel):
    org_id: str
    cycles: int = 0
    wakeups_pending: int = 0
    next_poll_at: float | None = None
    #: cycles in a row with a failed read (the next one comes sooner than the poll)
    consecutive_failures: int = 0
    #: the organisation has no mailbox left syncing: the workflow has ended (the next
    #: mailbox's start_sync starts it again)
    ended: bool = False
    continued_as_new: int = 0
    kinds: dict[str, OrgKindState] = Field(default_factory=dict)


class OrgSyncInput(BaseModel):
    org_id: str
    kinds: list[str] = Field(default_factory=lambda: ["contacts"])
    #: the safety net for a missed platform webhook
    poll_interval_s: float = 300.0
    heartbeat_timeout_s: float = 60.0
    state: OrgState | None = None
    wake: bool = True
