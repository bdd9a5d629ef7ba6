"""Validation rules a customer configures per organisation.

These are what make platform writes fail per item in real life (a required field,
a picklist, a phone format, a bespoke "needs a way to reach them" rule), so the
sync engine's quarantine path has something real to handle.

A violation names the rule and the field and never quotes the value: the message
ends up in quarantine lists, logs and metrics, which must not carry personal data.
"""

from __future__ import annotations

import re
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from models.errors import Fatal, ValidationRejected
from models.contact import FIELDS, SET_FIELDS, Contact

KINDS = ("required", "format", "max_length", "allowed_values", "custom")


@dataclass(frozen=True)
class Rule:
    """One configured rule. `name` is the customer's own label, reported on rejection."""

    name: str
    kind: str
    field: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def required(cls, name: str, field: str) -> "Rule":
        return cls(name, "required", field)

    @classmethod
    def format(cls, name: str, field: str, pattern: str) -> "Rule":
        return cls(name, "format", field, {"pattern": pattern})

    @classmethod
    def max_length(cls, name: str, field: str, max_length: int) -> "Rule":
        return cls(name, "max_length", field, {"max": int(max_length)})

    @classmethod
    def allowed_values(cls, name: str, field: str, values: Iterable[str]) -> "Rule":
        return cls(name, "allowed_values", field, {"values": list(values)})

    @classmethod
    def custom(cls, name: str, check: str, **params: Any) -> "Rule":
        return cls(name, "custom", None, {"check": check, **params})

    def to_row(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "field": self.field, "params": dict(self.params)}

    @classmethod
    def from_row(cls, row: Any) -> "Rule":
        return cls(row.name, row.kind, row.field, dict(row.params or {}))


@dataclass(frozen=True)
class Violation:
    """What a custom check reports: the field to blame and a value-free message."""

    field: str | None
    message: str


CustomCheck = Callable[[Contact, dict[str, Any]], "Violation | None"]
_CUSTOM_CHECKS: dict[str, CustomCheck] = {}


def register_check(name: str) -> Callable[[CustomCheck], CustomCheck]:
    """Register a custom rule implementation under `name` (process-wide)."""

    def deco(fn: CustomCheck) -> CustomCheck:
        _CUSTOM_CHECKS[name] = fn
        return fn

    return deco


def registered_checks() -> list[str]:
    return sorted(_CUSTOM_CHECKS)


def _email_domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].strip().lower() if "@" in email else ""


@register_check("phone_or_email_domain")
def _phone_or_email_domain(contact: Contact, params: dict[str, Any]) -> Violation | None:
    """A contact must be reachable: a phone, or an email at one of `domains`."""
    if contact.phones:
        return None
    allowed = {d.strip().lower() for d in params.get("domains", ())}
    if any(_email_domain(e) in allowed for e in contact.email_addresses()):
        return None
    return Violation("emails", "a phone or an email at an allowed domain is required")


def validate_definition(rule: Rule) -> None:
    """Refuse a rule that could never be applied; misconfiguration is Fatal, not a per-item error."""
    if not rule.name:
        raise Fatal("a rule needs a name")
    if rule.kind not in KINDS:
        raise Fatal(f"unknown rule kind {rule.kind!r}")
    if rule.kind == "custom":
        if rule.params.get("check") not in _CUSTOM_CHECKS:
            raise Fatal(f"rule {rule.name!r}: no custom check registered as {rule.params.get('check')!r}")
        return
    if rule.field not in FIELDS:
        raise Fatal(f"rule {rule.name!r}: unknown field {rule.field!r}")
    if rule.kind == "format":
        try:
            re.compile(rule.params["pattern"])
        except (KeyError, re.error) as exc:
            raise Fatal(f"rule {rule.name!r}: bad pattern") from exc
    if rule.kind == "max_length" and int(rule.params.get("max", -1)) < 0:
        raise Fatal(f"rule {rule.name!r}: max must be >= 0")
    if rule.kind == "allowed_values" and not isinstance(rule.params.get("values"), list):
        raise Fatal(f"rule {rule.name!r}: values must be a list")


def _values(contact: Contact, name: str) -> list[str]:
    value = getattr(contact, name)
    # a typed email or phone is checked as its address or number
    return [str(v) for v in value] if name in SET_FIELDS else ([value] if value else [])


def check(rule: Rule, contact: Contact) -> ValidationRejected | None:
    """Apply one rule. Set fields (emails, phones) are checked item by item."""
    f = rule.field
    if rule.kind == "custom":
        fn = _CUSTOM_CHECKS.get(rule.params.get("check", ""))
        if fn is None:
            raise Fatal(f"rule {rule.name!r}: custom check is not registered in this process")
        params = {k: v for k, v in rule.params.items() if k != "check"}
        v = fn(contact, params)
        if v is None:
            return None
        return ValidationRejected(f"rule {rule.name!r}: {v.message}", field=v.field, rule=rule.name)
    values = _values(contact, f)
    if rule.kind == "required":
        if not values:
            return ValidationRejected(f"rule {rule.name!r}: field {f!r} is required", field=f, rule=rule.name)
    elif rule.kind == "format":
        pattern = re.compile(rule.params["pattern"])
        if any(not pattern.fullmatch(v) for v in values):
            return ValidationRejected(
                f"rule {rule.name!r}: field {f!r} does not have the required format", field=f, rule=rule.name
            )
    elif rule.kind == "max_length":
        limit = int(rule.params["max"])
        if any(len(v) > limit for v in values):
            return ValidationRejected(
                f"rule {rule.name!r}: field {f!r} is longer than {limit} characters", field=f, rule=rule.name
            )
    elif rule.kind == "allowed_values":
        allowed = set(rule.params["values"])
        if any(v not in allowed for v in values):
            return ValidationRejected(
                f"rule {rule.name!r}: field {f!r} is not one of the allowed values", field=f, rule=rule.name
            )
    return None


def first_violation(rules: Iterable[Rule], contact: Contact) -> ValidationRejected | None:
    """The first broken rule in configured order (a product reports one error per save)."""
    for rule in rules:
        err = check(rule, contact)
        if err is not None:
            return err
    return None
