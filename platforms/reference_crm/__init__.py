"""The reference CRM: a small SQL-backed platform to sync against, and its adapter."""

from platforms.reference_crm.adapter import ReferenceCrmContacts
from platforms.reference_crm.rules import Rule, Violation, register_check
from platforms.reference_crm.service import Account, CrmContact, IdempotencyKeyReused, ReferenceCrm

__all__ = [
    "Account",
    "CrmContact",
    "IdempotencyKeyReused",
    "ReferenceCrm",
    "ReferenceCrmContacts",
    "Rule",
    "Violation",
    "register_check",
]
