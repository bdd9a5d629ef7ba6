"""Validation rules for the CRM's mail objects (leads, email activities), per organisation.

The contact rules (rules.py) are tied to the Contact model's fields; leads and email
activities have other fields and one more kind of limit (how many associations an
activity may carry), so they get a rule type of their own, configured the same way.
They exist so the mail kind's per-item rejection path meets real refusals.

As with contact rules, a rejection names the rule and the field, never the value.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from models.errors import Fatal, ValidationRejected

#: the fields a rule may name, per object; list-valued ones are checked item by item
OBJECT_FIELDS: dict[str, frozenset[str]] = {
    "lead": frozenset({"given_name", "family_name", "company", "emails", "owner_id"}),
    "email_activity": frozenset({"subject", "body_text", "sender", "recipients", "thread_key",
                                 "associations", "users", "attachments"}),
    # An outbox item (outbox_service): to/cc/bcc and recipients (all three) are address
    # lists, attachments its file names, attachment_bytes the decoded total size.
    "outgoing": frozenset({"to", "cc", "bcc", "recipients", "subject", "html", "text", "attachments",
                           "attachment_bytes", "user_id", "reply_to_key"}),
}
KINDS = ("required", "max_length", "max_count", "format", "allowed_values", "max_value")


@dataclass(frozen=True)
class MailRule:
    """One configured rule on a mail object. `name` is the customer's label ("lead.company required")."""

    name: str
    object: str
    kind: str
    field: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def required(cls, name: str, obj: str, field: str) -> "MailRule":
        return cls(name, obj, "required", field)

    @classmethod
    def max_length(cls, name: str, obj: str, field: str, max_length: int) -> "MailRule":
        return cls(name, obj, "max_length", field, {"max": int(max_length)})

    @classmethod
    def max_count(cls, name: str, obj: str, field: str, max_count: int) -> "MailRule":
        return cls(name, obj, "max_count", field, {"max": int(max_count)})

    @classmethod
    def max_value(cls, name: str, obj: str, field: str, max_value: float) -> "MailRule":
        """A numeric ceiling (an outgoing message's attachment_bytes): sizes are not lengths."""
        return cls(name, obj, "max_value", field, {"max": max_value})

    @classmethod
    def format(cls, name: str, obj: str, field: str, pattern: str) -> "MailRule":
        return cls(name, obj, "format", field, {"pattern": pattern})

    @classmethod
    def allowed_values(cls, name: str, obj: str, field: str, values: Iterable[str]) -> "MailRule":
        return cls(name, obj, "allowed_values", field, {"values": list(values)})

    def to_row(self) -> dict[str, Any]:
        return {"name": self.name, "object": self.object, "kind": self.kind, "field": self.field,
                "params": dict(self.params)}

    @classmethod
    def from_row(cls, row: Any) -> "MailRule":
        return cls(row.name, row.object, row.kind, row.field, dict(row.params or {}))


def validate_definition(rule: MailRule) -> None:
    """A rule that could never apply is a misconfiguration (Fatal), not a per-item error."""
    if not rule.name:
        raise Fatal("a rule needs a name")
    if rule.object not in OBJECT_FIELDS:
        raise Fatal(f"rule {rule.name!r}: unknown object {rule.object!r}")
    if rule.kind not in KINDS:
        raise Fatal(f"rule {rule.name!r}: unknown rule kind {rule.kind!r}")
    if rule.field not in OBJECT_FIELDS[rule.object]:
        raise Fatal(f"rule {rule.name!r}: unknown field {rule.field!r}")
    if rule.kind in ("max_length", "max_count", "max_value") and float(rule.params.get("max", -1)) < 0:
        raise Fatal(f"rule {rule.name!r}: max must be >= 0")
    if rule.kind == "format":
        try:
            re.compile(rule.params["pattern"])
        except (KeyError, re.error) as exc:
            raise Fatal(f"rule {rule.name!r}: bad pattern") from exc
    if rule.kind == "allowed_values" and not isinstance(rule.params.get("values"), list):
        raise Fatal(f"rule {rule.name!r}: values must be a list")


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return [v for v in value if v not in (None, "")]
    return [value]


def check(rule: MailRule, values: Mapping[str, Any]) -> ValidationRejected | None:
    f = rule.field
    items = _as_list(values.get(f))
    msg = None
    if rule.kind == "required" and not items:
        msg = f"field {f!r} is required"
    elif rule.kind == "max_length":
        limit = int(rule.params["max"])
        if any(len(str(v)) > limit for v in items):
            msg = f"field {f!r} is longer than {limit} characters"
    elif rule.kind == "max_count":
        limit = int(rule.params["max"])
        if len(items) > limit:
            msg = f"field {f!r} has more than {limit} entries"
    elif rule.kind == "max_value":
        limit = rule.params["max"]
        if any(float(v) > float(limit) for v in items):
            msg = f"field {f!r} is larger than {limit}"
    elif rule.kind == "format":
        pattern = re.compile(rule.params["pattern"])
        if any(not pattern.fullmatch(str(v)) for v in items):
            msg = f"field {f!r} does not have the required format"
    elif rule.kind == "allowed_values":
        allowed = set(rule.params["values"])
        if any(v not in allowed for v in items):
            msg = f"field {f!r} is not one of the allowed values"
    if msg is None:
        return None
    return ValidationRejected(f"rule {rule.name!r}: {msg}", field=f, rule=rule.name)


def first_violation(rules: Iterable[MailRule], obj: str, values: Mapping[str, Any]) -> ValidationRejected | None:
    """The first broken rule for `obj`, in configured order (one error per save, like a product)."""
    for rule in rules:
        if rule.object == obj:
            err = check(rule, values)
            if err is not None:
                return err
    return None
