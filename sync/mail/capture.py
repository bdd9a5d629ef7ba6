"""Who among a message's participants becomes a new lead or contact.

The policy's `auto_create` says from which mail: never, mail the user sent (the
default: writing to someone is the clearest sign they are business), or sent and
received. From such a message every participant is a candidate except the user's
own addresses, the organisation's domains, role addresses (info@, noreply@...),
blocklisted ones and anyone the platform already knows. Bulk and automated mail
creates nobody: its "participants" are systems and mailing lists.

Names come from the display name (nameparser handles "Last, First" and titles),
else from the local part (`jane.doe` -> Jane Doe). The company comes from the
domain's registrable label (`mail.acme-corp.co.uk` -> "Acme Corp"); free-mail
domains give no company. The suffix split knows a fixed list of common two-level
public suffixes (co.uk, com.au, co.jp, ...), not the whole Public Suffix List:
a rarer one (e.g. `gov.bc.ca`) yields the label just above it, a wrong but harmless
company name the user can correct.
"""

from __future__ import annotations

import re
from typing import Callable, Collection

from nameparser import HumanName

from models.mail import Address, MailMessage
from models.mail_log import NewPerson
from sync.mail.addresses import (
    address_forms, domain_of, in_domains, is_blocklisted, is_free_mail, is_role_address, local_part, unicode_domain,
)
from sync.mail.policy import MailPolicy
from sync.mail.rules import is_automated, is_bulk

TWO_LEVEL_SUFFIXES: frozenset[str] = frozenset(
    {
        "co.uk", "org.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "me.uk", "net.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "net.nz",
        "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "co.kr", "or.kr", "co.in", "net.in", "org.in",
        "co.za", "org.za", "co.il", "org.il", "com.br", "net.br", "org.br", "com.mx", "org.mx",
        "com.ar", "com.cn", "net.cn", "org.cn", "com.hk", "com.tw", "com.sg", "com.my", "com.tr",
        "com.pl", "com.ua", "co.id", "co.th", "com.ph", "com.vn", "com.co", "com.pe", "com.ng",
        "com.eg", "com.sa", "co.ke", "com.es", "com.pt", "co.at", "or.at",
    }
)
_SEP = re.compile(r"[._\-]+")


def company_from_domain(domain: str, free_mail_domains: Collection[str] = ()) -> str:
    if not domain or is_free_mail(domain, free_mail_domains):
        return ""
    labels = unicode_domain(domain).split(".")
    if len(labels) < 2 or ".".join(labels) in TWO_LEVEL_SUFFIXES:
        return ""
    suffix_len = 2 if ".".join(labels[-2:]) in TWO_LEVEL_SUFFIXES else 1
    name = labels[-suffix_len - 1]
    words = [w for w in _SEP.split(name) if w]
    return " ".join(w[:1].upper() + w[1:] for w in words)


def _looks_like_address(text: str) -> bool:
    return "@" in text


def person_name(address: Address) -> tuple[str, str]:
    """(given, family) from the display name, else from the local part."""
    display = address.name.strip().strip("'\"").strip()
    if display and not _looks_like_address(display):
        h = HumanName(display)
        h.capitalize()  # only changes ALL CAPS or all lower names
        given = " ".join(p for p in (h.first, h.middle) if p).strip()
        family = " ".join(p for p in (h.last, h.suffix) if p).strip()
        if given or family:
            return given, family
    local = local_part(address.email).split("+", 1)[0]
    words = [w for w in _SEP.split(local) if w and not w.isdigit()]
    words = [w.rstrip("0123456789") or w for w in words]
    words = [w[:1].upper() + w[1:].lower() for w in words]
    if not words:
        return "", ""
    if len(words) == 1:
        return words[0], ""
    return " ".join(words[:-1]), words[-1]


def _is_known(email: str, known: Callable[[str], bool] | Collection[str]) -> bool:
    if callable(known):
        return any(known(f) for f in address_forms(email))
    lowered = {k.strip().lower() for k in known}
    return any(f in lowered for f in address_forms(email))


def capture(
    msg: MailMessage,
    policy: MailPolicy,
    *,
    known: Callable[[str], bool] | Collection[str],
    own_user_emails: Collection[str],
    owner: str | None = None,
) -> list[NewPerson]:
    """The people to create, in participant order. `owner` is the connected user's
    id on the platform (the owner of what their mail creates)."""
    if policy.auto_create == "never":
        return []
    if policy.auto_create == "sent" and msg.direction != "sent":
        return []
    if is_bulk(msg) or is_automated(msg):
        return []
    own = {f for e in own_user_emails for f in address_forms(e)}
    out: list[NewPerson] = []
    for a in msg.participants():
        email = a.email
        domain = domain_of(email)
        if (
            not local_part(email)
            or "." not in domain
            or set(address_forms(email)) & own
            or in_domains(domain, policy.own_domains)
            or is_role_address(email, policy.role_addresses)
            or is_blocklisted(email, policy.blocklist)
            or _is_known(email, known)
        ):
            continue
        given, family = person_name(a)
        out.append(
            NewPerson(
                kind=policy.create_kind,
                email=email,
                given_name=given,
                family_name=family,
                company=company_from_domain(domain, policy.free_mail_domains),
                owner=owner,
            )
        )
    return out
