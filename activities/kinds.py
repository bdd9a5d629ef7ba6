"""The kinds of data the worker syncs, each with the platform adapter that holds it.

Adding a kind is one line here (its pure rules from `sync.kinds`, its adapter on
the platform) plus its connectors per provider; the pipeline, the store and the
workflow are shared. The workflow runs the kinds a connection enables
(`MailboxSyncInput.kinds`) in `models.workflow.KIND_ORDER`.
"""

from __future__ import annotations

from typing import Callable

from connectors.protocols import PlatformSide
from platforms.reference_crm.adapter import ReferenceCrmContacts
from sync.kinds import KindRules
from sync.kinds.contacts import CONTACTS

#: kind name -> (its rules, the reference platform's adapter for it, built from the platform's URL)
KINDS: dict[str, tuple[KindRules, Callable[[str], PlatformSide]]] = {
    "contacts": (CONTACTS, ReferenceCrmContacts),
}
