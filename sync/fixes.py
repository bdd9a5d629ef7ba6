"""Named fix rules: try to make a record the platform refused acceptable, without guessing.

Each rule is pure and conservative: it only rewrites what it can rewrite without
losing meaning (formatting, obviously broken values). A rule that cannot help
returns None and the item is quarantined with the platform's error instead.
"""

from __future__ import annotations

from typing import Callable

from models.contact import SCALAR_FIELDS, Contact
from sync.normalize import email_problem, normalize_phone

FixRule = Callable[[Contact, str | None], Contact | None]


def normalize_phones(contact: Contact, field: str | None) -> Contact | None:
    if field not in (None, "phones"):
        return None
    fixed = tuple(p.model_copy(update={"number": normalize_phone(p.number) or p.number}) for p in contact.phones)
    return Contact(**{**dict(contact), "phones": fixed}) if set(fixed) != set(contact.phones) else None


def drop_invalid_emails(contact: Contact, field: str | None) -> Contact | None:
    if field not in (None, "emails"):
        return None
    kept = tuple(e for e in contact.emails if email_problem(e.address) is None)
    if len(kept) == len(contact.emails) or not kept:
        return None  # dropping the only address would lose the person's identity
    return contact.model_copy(update={"emails": kept})


def truncate_long_fields(contact: Contact, field: str | None, limit: int = 255) -> Contact | None:
    names = [field] if field in SCALAR_FIELDS else list(SCALAR_FIELDS)
    update = {n: getattr(contact, n)[:limit] for n in names if len(getattr(contact, n)) > limit}
    return contact.model_copy(update=update) if update else None


FIX_RULES: dict[str, FixRule] = {
    "normalize_phones": normalize_phones,
    "drop_invalid_emails": drop_invalid_emails,
    "truncate_long_fields": truncate_long_fields,
}


def apply_fix_rules(contact: Contact, field: str | None, rule_names: tuple[str, ...]) -> tuple[Contact, list[str]] | None:
    """Apply every configured rule that changes something; None if none did."""
    applied: list[str] = []
    current = contact
    for name in rule_names:
        rule = FIX_RULES.get(name)
        if rule is None:
            continue
        fixed = rule(current, field)
        if fixed is not None and fixed != current:
            current, applied = fixed, applied + [name]
    return (current, applied) if applied else None
