"""The kinds of data the worker syncs, each with the platform adapter that holds it.

Adding a kind is one line here (its pure rules from `sync.kinds`, its adapter on
the platform) plus its connectors per provider; the pipeline, the store and the
workflow are shared. The workflow runs the kinds a connection enables
(`MailboxSyncInput.kinds`) in `models.workflow.KIND_ORDER`.
"""

from __future__ import annotations

from typing import Callable

from activities.calendar import CalendarPipeline
from activities.mail import MailFactory, MailPipeline
from activities.send import SendPipeline
from models.mail import MailFetchOptions
from activities.pipeline import KindPipeline, MailboxFactory
from connectors.protocols import PlatformSide
from platforms.reference_crm.adapter import ReferenceCrmContacts
from platforms.reference_crm.mail_adapter import ReferenceCrmMail
from platforms.reference_crm.outbox_adapter import ReferenceCrmOutbox
from platforms.reference_crm.pm_adapter import ReferenceCrmCalendar
from sync.kinds import KindRules
from sync.kinds.calendar import CALENDAR
from sync.kinds.contacts import CONTACTS
import settings

#: record kinds synced both ways: kind name -> (its rules, the reference platform's adapter
#: for it, built from the platform's URL)
KINDS: dict[str, tuple[KindRules, Callable[[str], PlatformSide]]] = {
    "contacts": (CONTACTS, ReferenceCrmContacts),
}


def build_pipelines(sessions, crm_url: str, mailboxes: MailboxFactory, mail_for: MailFactory | None,
                    calendar_for: MailboxFactory | None = None) -> dict:
    """Every kind the worker runs: the record kinds, mail and send (their own steps over
    the same activity names) when a mail connector factory is given, and the calendar
    (records too, with meeting claims and roles) when a calendar connector factory is."""
    pipelines: dict = {name: KindPipeline(sessions, rules, adapter(crm_url), mailboxes)
                       for name, (rules, adapter) in KINDS.items()}
    if calendar_for is not None:
        pipelines["calendar"] = CalendarPipeline(sessions, CALENDAR, ReferenceCrmCalendar(crm_url), calendar_for)
    if mail_for is not None:
        platform = ReferenceCrmMail(crm_url)
        pipelines["mail"] = MailPipeline(sessions, platform, mail_for)
        # the mail connectors send too (MailboxSend): built without fetch options
        pipelines["send"] = SendPipeline(sessions, ReferenceCrmOutbox(crm_url), platform,
                                         lambda info: mail_for(info, MailFetchOptions()),
                                         lease_s=settings.load().send_lease_s)
    return pipelines
