"""The mail kind's rules as the shared core sees them.

Mail is logged, not merged: the generic planner (links, three-way merge, duplicate
search) never runs on it; its own planner is `activities/mail.py` over the pure rules
in `sync/mail/`. What the shared machinery still uses is the model (to read staged
records back) and the problems check, so these rules are the minimum.
"""

from __future__ import annotations

from typing import Any, Collection

from models.mail import MailMessage
from sync.kinds import KindRules
from sync.matching import Match, MatchScore, Thresholds
from sync.policy import SyncSettings


def _problems(msg: MailMessage, settings: SyncSettings) -> list[str]:
    return list(msg.problems)


class _NoIndex:
    """Messages are never matched by similarity: their identity is the Message-ID."""

    def add(self, key: Any, content: Any) -> None:
        return None

    def best(self, content: Any, thresholds: Thresholds, *, exclude: Collection = ()) -> Match:
        return Match("none", None, 0.0, ())


MAIL: KindRules[MailMessage] = KindRules(
    name="mail",
    model=MailMessage,
    problems=_problems,
    keys=lambda msg: set(),
    new_index=_NoIndex,
    score=lambda a, b: MatchScore(0.0, ()),
)
