"""Which platform records a message is attached to, and which choices it cannot make.

Nothing is guessed silently. A participant's address finds its people; a certain
match is attached, and every unclear one becomes an `Ambiguity` with a reason code
and its options, which the policy settles: "all" attaches every option, "none"
attaches none (counted in `dropped`), "ask" returns it for the review queue while
the certain associations are attached now.

The rules:

- Participants are everyone on the message except the user's own addresses, the
  organisation's own domains and blocklisted addresses.
- An address held by one contact and any number of leads goes to the contact (a
  lead sharing a contact's address is a lead not yet converted or merged). Two
  contacts, or two leads with no contact, holding it: `address_shared_by_contacts` /
  `address_shared_by_leads`.
- Accounts come from a contact's `account_id`. Only a participant matching no person
  at all is looked up by domain, never a free-mail domain; two accounts with the
  domain: `domain_shared_by_accounts`.
- Opportunities come only through contacts' roles (`opportunities` is keyed by
  contact id and holds the open ones), never from a domain; a contact in two open
  opportunities: `contact_in_several_opportunities`.
- A contact that is itself an unsettled option is not followed to its account or
  opportunities unless the policy is "all" (then they are followed and judged by
  the same rules); the review's answer is expected to re-run association.
"""

from __future__ import annotations

from typing import Collection, Iterable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from models.mail import MailMessage
from models.mail_log import AccountRef, Association, OpportunityRef, Person
from sync.mail.addresses import address_forms, ascii_domain, domain_of, in_domains, is_blocklisted, is_free_mail, unicode_domain
from sync.mail.policy import MailPolicy

ADDRESS_SHARED_BY_CONTACTS = "address_shared_by_contacts"
ADDRESS_SHARED_BY_LEADS = "address_shared_by_leads"
DOMAIN_SHARED_BY_ACCOUNTS = "domain_shared_by_accounts"
CONTACT_IN_SEVERAL_OPPORTUNITIES = "contact_in_several_opportunities"
AMBIGUITY_REASONS: tuple[str, ...] = (
    ADDRESS_SHARED_BY_CONTACTS, ADDRESS_SHARED_BY_LEADS, DOMAIN_SHARED_BY_ACCOUNTS, CONTACT_IN_SEVERAL_OPPORTUNITIES,
)

Reason = Literal[
    "address_shared_by_contacts", "address_shared_by_leads", "domain_shared_by_accounts",
    "contact_in_several_opportunities",
]


class Ambiguity(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: Reason
    #: what the choice is about: the address, the domain or the contact id
    about: str
    options: tuple[Association, ...]


class Associations(BaseModel):
    model_config = ConfigDict(frozen=True)

    chosen: tuple[Association, ...] = ()
    #: left for review (policy "ask")
    ambiguities: tuple[Ambiguity, ...] = ()
    #: settled by attaching every option (policy "all")
    attached_all: int = 0
    #: settled by attaching none (policy "none")
    dropped: int = 0


def _unique(items: Iterable, key=lambda x: x.id) -> list:
    seen: dict = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


def _lookup(table: Mapping[str, Sequence], keys: Iterable[str]) -> list:
    return _unique(x for k in keys for x in table.get(k, ()))


def _as(obj_type: str, items: Iterable) -> tuple[Association, ...]:
    return tuple(Association(object_type=obj_type, object_id=x.id) for x in items)


def _participants(msg: MailMessage, policy: MailPolicy, own_emails: Collection[str]) -> list[str]:
    own = {f for e in own_emails for f in address_forms(e)}
    return [
        a.email
        for a in msg.participants()
        if not set(address_forms(a.email)) & own
        and not in_domains(domain_of(a.email), policy.own_domains)
        and not is_blocklisted(a.email, policy.blocklist)
    ]


def associate(
    msg: MailMessage,
    *,
    people: Mapping[str, Sequence[Person]],
    accounts: Mapping[str, Sequence[AccountRef]],
    opportunities: Mapping[str, Sequence[OpportunityRef]],
    policy: MailPolicy,
    own_emails: Collection[str],
) -> Associations:
    """`people` is keyed by address, `accounts` by domain, `opportunities` by contact id."""
    chosen: dict[Association, None] = {}
    found: dict[tuple[str, str], Ambiguity] = {}
    follow: list[Person] = []

    def ambiguous(reason: str, about: str, options: tuple[Association, ...]) -> None:
        found.setdefault((reason, about), Ambiguity(reason=reason, about=about, options=options))

    for email in _participants(msg, policy, own_emails):
        persons = _lookup(people, address_forms(email))
        contacts = [p for p in persons if p.kind == "contact"]
        leads = [p for p in persons if p.kind == "lead"]
        if len(contacts) == 1:
            chosen[_as("contact", contacts)[0]] = None
            follow.append(contacts[0])
        elif contacts:
            ambiguous(ADDRESS_SHARED_BY_CONTACTS, email, _as("contact", contacts))
            if policy.ambiguity == "all":
                follow.extend(contacts)
        elif len(leads) == 1:
            chosen[_as("lead", leads)[0]] = None
        elif leads:
            ambiguous(ADDRESS_SHARED_BY_LEADS, email, _as("lead", leads))
        else:
            domain = domain_of(email)
            if not domain or is_free_mail(domain, policy.free_mail_domains):
                continue
            accts = _lookup(accounts, dict.fromkeys((domain, ascii_domain(domain), unicode_domain(domain))))
            if len(accts) == 1:
                chosen[_as("account", accts)[0]] = None
            elif accts:
                ambiguous(DOMAIN_SHARED_BY_ACCOUNTS, domain, _as("account", accts))

    for contact in _unique(follow):
        if contact.account_id:
            chosen[Association(object_type="account", object_id=contact.account_id)] = None
        opps = _lookup(opportunities, (contact.id,))
        if len(opps) == 1:
            chosen[_as("opportunity", opps)[0]] = None
        elif opps:
            ambiguous(CONTACT_IN_SEVERAL_OPPORTUNITIES, contact.id, _as("opportunity", opps))

    ambiguities = tuple(found.values())
    if policy.ambiguity == "all":
        for amb in ambiguities:
            chosen.update(dict.fromkeys(amb.options))
        return Associations(chosen=tuple(chosen), attached_all=len(ambiguities))
    if policy.ambiguity == "none":
        return Associations(chosen=tuple(chosen), dropped=len(ambiguities))
    return Associations(chosen=tuple(chosen), ambiguities=ambiguities)
