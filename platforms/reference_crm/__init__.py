"""The reference CRM: a small SQL-backed platform to sync against, and its adapter."""

from platforms.reference_crm.adapter import ReferenceCrmContacts
from platforms.reference_crm.mail_adapter import ReferenceCrmMail
from platforms.reference_crm.mail_rules import MailRule
from platforms.reference_crm.outbox_adapter import ReferenceCrmOutbox
from platforms.reference_crm.pm_adapter import ReferenceCrmCalendar
from platforms.reference_crm.pm_rules import PmRule
from platforms.reference_crm.rules import Rule, Violation, register_check
from platforms.reference_crm.service import Account, CrmContact, IdempotencyKeyReused, ReferenceCrm

__all__ = [
    "Account",
    "CrmContact",
    "IdempotencyKeyReused",
    "MailRule",
    "PmRule",
    "ReferenceCrm",
    "ReferenceCrmCalendar",
    "ReferenceCrmContacts",
    "ReferenceCrmMail",
    "ReferenceCrmOutbox",
    "Rule",
    "Violation",
    "register_check",
]
