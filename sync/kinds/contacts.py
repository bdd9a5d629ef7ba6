"""The contacts kind's pure rules: what the generic core asks of a contact."""

from __future__ import annotations

from models.contact import Contact
from sync.fixes import apply_fix_rules
from sync.kinds import KindRules
from sync.matching import CandidateIndex, score
from sync.normalize import blocking_keys, contact_problems
from sync.policy import SyncSettings


def _problems(contact: Contact, settings: SyncSettings) -> list[str]:
    return contact_problems(contact, max_field_len=settings.max_field_len)


CONTACTS: KindRules[Contact] = KindRules(
    name="contacts",
    model=Contact,
    problems=_problems,
    keys=blocking_keys,
    new_index=CandidateIndex,
    score=score,
    fix=apply_fix_rules,
)
