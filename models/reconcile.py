"""What crosses workflow history for reconciliation: ids, counts and field names only.

The details a person acts on (which records, the values that differ) are stored in the
store's `reconcile_reports` table and read from there (`concord reconcile CONN --json`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

#: the finding categories, each counted in `ReconcileCounts.found`
CATEGORIES = ("differing", "missing", "duplicates", "unfinished")


class ReconcileRequest(BaseModel):
    connection_id: str
    kind: str = "contacts"
    #: whether repairs the connection's policy allows are made (False: report only)
    repair: bool = True


class ReconcileCounts(BaseModel):
    """One connection's and kind's run, as counts: no ids of people, no values."""

    connection_id: str
    kind: str
    #: False for a kind with nothing to compare record by record (mail, send)
    applicable: bool = True
    report_id: int | None = None
    mailbox_records: int = 0
    platform_records: int = 0
    links: int = 0
    #: category -> how many findings
    found: dict[str, int] = Field(default_factory=dict)
    #: which fields differed on linked pairs, with how many pairs: field names, never values
    differing_fields: dict[str, int] = Field(default_factory=dict)
    #: items put back in the queue so the next cycle re-merges them
    restaged: int = 0
    #: findings listed for a person (no automatic repair)
    listed: int = 0


class ReconcileInput(BaseModel):
    org_id: str
    #: seconds between runs (the schedule); a `run_now` signal runs one at once
    interval_s: float = 86_400.0
    kinds: list[str] = Field(default_factory=lambda: ["contacts"])
    #: None: every active connection of the organisation
    connection_ids: list[str] | None = None
    #: run once and return (on demand); otherwise loop on the timer
    once: bool = False
    #: the first run happens at once rather than after one interval
    run_first: bool = False
    repair: bool = True
    heartbeat_timeout_s: float = 120.0
    state: "ReconcileState | None" = None


class ReconcileRun(BaseModel):
    """One run over the organisation's connections (or the ones named)."""

    at: float = 0.0
    results: list[ReconcileCounts] = Field(default_factory=list)
    #: connection id -> the error class of a run that failed
    failed: dict[str, str] = Field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for r in self.results:
            for k, v in r.found.items():
                out[k] = out.get(k, 0) + v
        out["restaged"] = sum(r.restaged for r in self.results)
        return out


class ReconcileState(BaseModel):
    org_id: str
    runs: int = 0
    last: ReconcileRun | None = None
    next_run_at: float | None = None
    continued_as_new: int = 0


ReconcileInput.model_rebuild()
