"""Addresses as the mail rules compare them: by domain, by role, against a blocklist.

Domains are compared in their ASCII (punycode) form, so `bücher.de` written either
way is one domain. A listed domain covers its subdomains (`acme.com` covers
`eu.acme.com`): an organisation's mail servers and a blocked sender's often live
on subdomains. Free-mail domains are the exception, matched exactly, because
`mail.yahoo.com`-style subdomains are not where people's addresses live.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

import idna

_NOREPLY = re.compile(r"^(no-?_?reply|do-?_?not-?_?reply|mailer-daemon|bounces?)([-._+].*)?$")


@lru_cache(maxsize=4096)
def ascii_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    if not d:
        return ""
    try:
        return idna.encode(d, uts46=True).decode("ascii")
    except idna.IDNAError:
        return d


@lru_cache(maxsize=4096)
def unicode_domain(domain: str) -> str:
    d = ascii_domain(domain)
    try:
        return idna.decode(d)
    except idna.IDNAError:
        return d


def domain_of(email: str) -> str:
    """The ASCII-form domain of an address ("" when it has none)."""
    _, at, domain = (email or "").strip().rpartition("@")
    return ascii_domain(domain) if at else ""


def local_part(email: str) -> str:
    local, at, _ = (email or "").strip().lower().rpartition("@")
    return local if at else ""


def address_forms(email: str) -> tuple[str, ...]:
    """The spellings a platform may have stored an address under: as given, and with
    its domain in ASCII and in Unicode form (each once, in that order)."""
    email = (email or "").strip().lower()
    local = local_part(email)
    forms = [email]
    if local:
        d = domain_of(email)
        for f in (f"{local}@{d}", f"{local}@{unicode_domain(d)}"):
            if f not in forms:
                forms.append(f)
    return tuple(forms)


def in_domains(domain: str, domains: Iterable[str]) -> bool:
    """True when `domain` is one of `domains` or a subdomain of one."""
    d = ascii_domain(domain)
    if not d:
        return False
    for listed in domains:
        ld = ascii_domain(listed)
        if ld and (d == ld or d.endswith("." + ld)):
            return True
    return False


def is_free_mail(domain: str, free_mail_domains: Iterable[str]) -> bool:
    d = ascii_domain(domain)
    return bool(d) and d in {ascii_domain(x) for x in free_mail_domains}


def is_role_address(email: str, role_addresses: Iterable[str]) -> bool:
    """A function's mailbox rather than a person's: the local part (without a plus tag)
    is a listed role, or a no-reply/bounce variant such as `noreply-billing`."""
    local = local_part(email).split("+", 1)[0]
    if not local:
        return False
    return local in {r.lower() for r in role_addresses} or bool(_NOREPLY.match(local))


def is_blocklisted(email: str, blocklist: Iterable[str]) -> bool:
    """Listed by address, or by domain (`b.com` or `@b.com`, subdomains included)."""
    email = (email or "").strip().lower()
    addr_forms = set(address_forms(email))
    domains = []
    for entry in blocklist:
        e = entry.strip().lower()
        if "@" in e.lstrip("@"):
            if set(address_forms(e)) & addr_forms:
                return True
        else:
            domains.append(e.lstrip("@"))
    return in_domains(domain_of(email), domains)
