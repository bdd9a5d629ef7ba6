"""A person's answers to reviews, for any kind of data.

A review knows which kind it is about (`reviews.item_kind`), so the workflow hands
over answers by review id alone. The same steps stay registered under the names
runs started before kinds call them (`contacts.apply_resolutions`,
`contacts.check_answer`) until every such run has continued as new.
"""

from __future__ import annotations

from activities.pipeline import as_activity
from models.workflow import Resolution
from store import cycle


class ReviewActivities:
    def __init__(self, sessions) -> None:
        self.sessions = sessions

    def apply_answers(self, connection_id: str, resolutions: list[Resolution]) -> int:
        """Record each answer and re-open its items so the next plan applies it; answers
        the store refuses (see `store.cycle.answer_problem`) are not counted."""
        applied = 0
        with self.sessions.begin() as s:
            for r in resolutions:
                if cycle.resolve_review_and_reopen(s, connection_id, r.review_id, r.choice):
                    applied += 1
        return applied

    def check_answer(self, connection_id: str, resolution: Resolution) -> str:
        """Why the store would refuse this answer ("" when it takes it), for the update."""
        with self.sessions() as s:
            return cycle.answer_problem(s, connection_id, resolution.review_id, resolution.choice) or ""

    def activities(self) -> list:
        return [
            as_activity("reviews.apply_answers", self.apply_answers),
            as_activity("reviews.check_answer", self.check_answer),
            as_activity("contacts.apply_resolutions", self.apply_answers),  # runs started before kinds
            as_activity("contacts.check_answer", self.check_answer),
        ]
