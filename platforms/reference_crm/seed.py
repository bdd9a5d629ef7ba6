"""Deterministic demo data for one organisation of the reference CRM.

The demo needs the situations sync must handle on day one: records that are the
same people as mailbox contacts but typed differently (near-duplicates the matcher
must link, not copy), accounts for contacts to hang off, and one record that breaks
a validation rule the customer added after it was entered (so any write-back to it
is rejected and must be quarantined). Same seed, same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from models.contact import Contact
from platforms.reference_crm.rules import Rule
from platforms.reference_crm.service import ReferenceCrm

GIVEN = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken",
         "Radia", "Tim", "Sophie", "Linus", "Hedy", "Claude", "Katherine", "Dennis", "Anita", "Niklaus"]
FAMILY = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "McCarthy", "Hamilton",
          "Thompson", "Perlman", "Berners-Lee", "Wilson", "Torvalds", "Lamarr", "Shannon", "Johnson",
          "Ritchie", "Borg", "Wirth"]
ACCOUNTS = [("Northwind Traders", "northwind.example"), ("Contoso Ltd", "contoso.example"),
            ("Fabrikam, Inc.", "fabrikam.example"), ("Tailspin Toys", "tailspin.example"),
            ("Woodgrove Bank", "woodgrove.example")]
TITLES = ["Engineer", "Sales Director", "CTO", "Buyer", "Office Manager", "Account Executive", ""]
FREE = ["gmail.com", "outlook.com", "yahoo.com"]
REACHABLE_RULE = "reachable"


@dataclass
class SeedResult:
    org_id: str
    account_ids: list[str] = field(default_factory=list)
    contact_ids: list[str] = field(default_factory=list)
    #: index in the given mailbox contacts -> id of its near-duplicate in the CRM
    near_duplicates: dict[int, str] = field(default_factory=dict)
    #: the record entered before the rule existed; writing it back is rejected
    invalid_contact_id: str = ""
    invalid_rule: str = REACHABLE_RULE


def default_rules(domains: Sequence[str]) -> list[Rule]:
    """The rules the demo organisation configures."""
    return [
        Rule.custom(REACHABLE_RULE, "phone_or_email_domain", domains=list(domains)),
        Rule.max_length("notes_length", "notes", 2000),
        Rule.format("phone_format", "phones", r"\+?[0-9][0-9 ()./-]{5,}"),
    ]


def _phone(rng: random.Random) -> str:
    return f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 4:
        return s.upper()
    i = rng.randrange(1, len(s) - 2)
    return s[:i] + s[i + 1] + s[i] + s[i + 2:]


def _near_duplicate(rng: random.Random, c: Contact) -> Contact:
    """The same person as typed by someone else into the CRM."""
    kind = rng.randrange(3)
    emails = list(c.email_addresses())
    phones = list(c.phone_numbers())
    given, family = c.given_name, c.family_name
    if kind == 0:  # shouting email, lower-cased name
        emails = [e.upper() for e in emails]
        given, family = given.lower(), family.lower()
    elif kind == 1:  # a typo in the family name, phone digits only
        family = _typo(rng, family)
        phones = ["".join(ch for ch in p if ch.isdigit() or ch == "+") for p in phones]
    else:  # only the first email, and a job title the mailbox lacks
        emails = emails[:1]
    return Contact(given_name=given, family_name=family, emails=emails, phones=phones, company=c.company,
                   job_title=c.job_title or rng.choice(TITLES), notes="entered by sales")


def seed_organisation(
    crm: ReferenceCrm,
    org_id: str,
    *,
    n: int = 50,
    seed: int = 0,
    owner_ids: Sequence[str] = ("user_1",),
    mailbox_contacts: Sequence[Contact] = (),
    rules: Sequence[Rule] | None = None,
) -> SeedResult:
    """Seed `org_id` with `n` contacts in all (near-duplicates and the invalid one included).

    Rules (default: `default_rules` over the accounts' domains) are configured first.
    Generated records pass them; near-duplicates get a phone when that makes them
    pass, and otherwise keep the mailbox's data as is (stored unchecked, as an
    import would). The one deliberately invalid record breaks `invalid_rule`.
    """
    rng = random.Random(seed)
    out = SeedResult(org_id)
    for name, domain in ACCOUNTS:
        out.account_ids.append(crm.create_account(org_id, name, domain).id)
    rules = list(rules) if rules is not None else default_rules([d for _, d in ACCOUNTS])
    crm.configure_rules(org_id, rules)
    owners = list(owner_ids)

    def owner(i: int) -> str:
        return owners[i % len(owners)]

    for i, mc in enumerate(mailbox_contacts[: max(n - 1, 0)]):
        dup = _near_duplicate(rng, mc)
        if crm.check_rules(org_id, dup) is not None:
            dup = Contact(**{**dup.model_dump(), "phones": list(dup.phone_numbers()) + [_phone(rng)]})
        rec = crm.create_contact(org_id, dup, owner_id=owner(i), actor="seed", enforce_rules=False)
        out.near_duplicates[i] = rec.id
        out.contact_ids.append(rec.id)

    for i in range(max(n - len(out.contact_ids) - 1, 0)):
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        local = f"{given}.{family}{i}".lower().replace("-", "")
        if rng.random() < 0.6:
            company, domain = rng.choice(ACCOUNTS)
            c = Contact(given_name=given, family_name=family, emails=[f"{local}@{domain}"], company=company,
                        job_title=rng.choice(TITLES), phones=[_phone(rng)] if rng.random() < 0.5 else [])
        else:
            c = Contact(given_name=given, family_name=family, emails=[f"{local}@{rng.choice(FREE)}"],
                        phones=[_phone(rng)], job_title=rng.choice(TITLES))
        out.contact_ids.append(crm.create_contact(org_id, c, owner_id=owner(i), actor="seed").id)

    if n > 0:
        # Entered before the "reachable" rule existed: a free-mail address and no phone.
        bad = Contact(given_name="Legacy", family_name="Import", emails=["legacy.import@gmail.com"])
        rec = crm.create_contact(org_id, bad, owner_id=owner(0), actor="seed", enforce_rules=False)
        out.invalid_contact_id = rec.id
        out.contact_ids.append(rec.id)
    return out
