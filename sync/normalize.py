"""Normalisation for matching: the forms in which two spellings of one person compare equal.

Nothing here rewrites stored data: `Contact` keeps what the user typed, and these
functions produce comparison keys only (see `models.contact`). Everything is pure
and cheap enough to run on every contact of an organisation when an index is built.

Choices worth knowing:

- Gmail ignores dots in the local part and `googlemail.com` is the same mailbox, so
  both are folded. Other domains (including Google Workspace ones) treat dots as
  significant, so they are left alone.
- Plus tags (`ann+news@`) are stripped only for the large providers that document
  plus addressing (`PLUS_ADDRESSING_DOMAINS`). On a company's own domain `+` may be
  a different mailbox, or the separator may be `-`; merging two people there costs
  more than missing a duplicate, which name + company scoring still sends to review.
  Yahoo's disposable addresses use `-` and a chosen base name, so Yahoo is excluded.
- Blocking keys are bounded (at most 25 per contact, about 12 in practice) because
  the store keeps them in key tables (link_keys, mirror_keys); each is
  exact-equality, so candidate lookup is a handful of probes. They are made to
  survive a one-letter typo in either name, swapped given/family fields, a given
  name cut to its initial, a nickname, and a replaced family name (through the
  address, birthday, email and phone keys): see `blocking_keys`.
- National phone numbers are read in the organisation's region
  (`SyncSettings.phone_region`, default US); `normalized` and every key and score
  take it as `region`.
"""

from __future__ import annotations

import re
import unicodedata
import weakref
from functools import lru_cache
from dataclasses import dataclass
from threading import Lock

import idna
import jellyfish
import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from nameparser import HumanName

from models.contact import SCALAR_FIELDS, Contact

FREE_MAIL_DOMAINS: frozenset[str] = frozenset(
    {
        "gmail.com", "googlemail.com",
        "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it",
        "live.com", "live.co.uk", "live.fr", "msn.com", "outlook.fr", "outlook.de",
        "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.es", "yahoo.it", "yahoo.co.jp",
        "ymail.com", "rocketmail.com", "aol.com",
        "icloud.com", "me.com", "mac.com",
        "proton.me", "protonmail.com", "pm.me", "tutanota.com", "hey.com",
        "fastmail.com", "fastmail.fm", "zoho.com", "mail.com", "email.com",
        "gmx.com", "gmx.de", "gmx.net", "web.de", "t-online.de", "freenet.de",
        "orange.fr", "free.fr", "laposte.net", "sfr.fr", "wanadoo.fr", "libero.it", "virgilio.it",
        "btinternet.com", "sky.com", "comcast.net", "att.net", "verizon.net", "sbcglobal.net",
        "yandex.ru", "yandex.com", "mail.ru", "qq.com", "163.com", "126.com", "naver.com",
    }
)
"""Consumer mailbox domains: sharing one says nothing about sharing an employer."""

PLUS_ADDRESSING_DOMAINS: frozenset[str] = frozenset(
    {
        "gmail.com", "googlemail.com",
        "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr", "live.com", "msn.com",
        "icloud.com", "me.com", "mac.com",
        "fastmail.com", "fastmail.fm", "proton.me", "protonmail.com", "pm.me",
    }
)
"""Providers whose documented plus addressing delivers `a+tag@` to `a@`."""

_GMAIL = frozenset({"gmail.com", "googlemail.com"})

# Letters that NFKD does not decompose but people type without the diacritic.
_FOLD = str.maketrans(
    {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe", "ı": "i", "ħ": "h", "ŧ": "t"}
)
_DROPPED = frozenset("'’‘`´ʼ")  # O'Brien == OBrien: apostrophes join, they don't separate
_COMPANY_SUFFIXES = frozenset(
    {
        "inc", "incorporated", "llc", "llp", "ltd", "limited", "corp", "corporation", "co", "company",
        "gmbh", "ag", "sa", "sas", "sarl", "srl", "spa", "bv", "nv", "plc", "pty", "oy", "ab", "as", "kg",
    }
)


# --- emails -------------------------------------------------------------------


def normalize_email(value: str) -> str | None:
    """The mailbox an address delivers to, or None if `value` is not shaped like an address.

    This is a cheap shape check for matching, not validation (see `email_problem`):
    a slightly odd address should still find its duplicate.
    """
    if not isinstance(value, str):
        return None
    v = value.strip()
    if v[:7].casefold() == "mailto:":
        v = v[7:]
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1]
    v = unicodedata.normalize("NFC", unicodedata.normalize("NFC", v).casefold()).strip()
    if v.count("@") != 1:
        return None
    local, domain = v.split("@")
    domain = domain.rstrip(".")
    if "xn--" in domain:
        domain = _idna_to_unicode(domain)
    if not local or not domain or "." not in domain:
        return None
    if domain.startswith((".", "-")) or ".." in domain:
        return None
    if _ASCII_BAD.search(v) if v.isascii() else any(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in v):
        return None
    if domain == "googlemail.com":
        domain = "gmail.com"
    if domain in PLUS_ADDRESSING_DOMAINS:
        base = local.split("+", 1)[0]
        local = base or local
    if domain in _GMAIL:
        undotted = local.replace(".", "")
        local = undotted or local
    return f"{local}@{domain}"


_ASCII_BAD = re.compile(r"[\s\x00-\x1f\x7f]")


def _idna_to_unicode(domain: str) -> str:
    """The Unicode form of a punycode (xn--) domain, label by label.

    `idna` decodes per IDNA 2008 (and checks the label is a valid one); a label it
    refuses (IDNA 2003 leftovers such as some symbols) falls back to the bare
    punycode codec, so that an address still compares equal to its other spelling.
    """
    labels = []
    for label in domain.split("."):
        if label.startswith("xn--"):
            try:
                label = idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                try:
                    label = label[4:].encode("ascii").decode("punycode")
                except (UnicodeError, ValueError):
                    pass
            label = unicodedata.normalize("NFC", label.casefold())
        labels.append(label)
    return ".".join(labels)


def email_problem(value: str) -> str | None:
    """Why an address is unusable, in words a user can act on; None if it is fine.

    Deliverability (DNS) is deliberately not checked: this runs in the pure core.
    """
    if not isinstance(value, str) or not value.strip():
        return "The email address is empty."
    return _email_problem(value)


#: the plain form almost every address takes (ASCII atoms joined by single dots, letter
#: top-level domain): valid for email-validator too, at a fraction of its cost, which
#: an initial sync of tens of thousands of new addresses pays once each
_PLAIN_EMAIL = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)


def _plain_email(value: str) -> bool:
    if len(value) > 254 or not _PLAIN_EMAIL.fullmatch(value):
        return False
    local, domain = value.rsplit("@", 1)
    domain = domain.lower()
    return len(local) <= 64 and not any(domain == d or domain.endswith("." + d) for d in _SPECIAL_USE)


@lru_cache(maxsize=65536)
def _email_problem(value: str) -> str | None:
    # Pure in its string, and the same addresses come back every cycle (echoes, re-plans).
    if _plain_email(value):
        return None
    try:
        validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    except UnicodeError:
        return "The email address contains broken unicode."
    return None


def email_domain(value: str) -> str | None:
    normalized = normalize_email(value)
    return normalized.rsplit("@", 1)[1] if normalized else None


# --- phones -------------------------------------------------------------------


def normalize_phone(value: str, default_region: str = "US") -> str | None:
    """E.164 form, so `(415) 555-0134` and `+1 415.555.0134` compare equal.

    Only `is_possible_number` (length) is required, not `is_valid_number`: number
    plans change faster than the metadata, and a real but unlisted number must still
    find its duplicate. Extensions are dropped (same line, same person).

    The parser only strips the international dialling prefix of `default_region`
    (011 for the US), so `0044 20 ...`, written the way most of the world dials
    abroad, would be lost. When the number does not parse as a number of the
    default region, a leading 00 or 011 is read as an international prefix.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    fast = _north_american(value, default_region)
    if fast is not None:
        return fast
    parsed = _possible_number(value, default_region)
    if parsed is None:
        start = value.lstrip(" \t(")
        prefix = next((p for p in _INTERNATIONAL_PREFIXES if start.startswith(p)), None)
        if prefix is not None:
            parsed = _possible_number("+" + start[len(prefix):], default_region)
    if parsed is None:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


_NANP_REGIONS = frozenset({"US", "CA"})
_NANP_SHAPE = re.compile(r"\+?[0-9 .()-]+")
_NOT_DIGITS = str.maketrans("", "", " .()-")


def _north_american(value: str, region: str) -> str | None:
    """E.164 for the plainest North American layouts without the full parser.

    `phonenumbers.parse` costs ~200 us; indexing 100,000 contacts spends most of its
    time there. A number of 10 digits read in a North American region, or 1 + 10
    digits, is a possible number whatever its area code, so the answer is the same.
    """
    s = value.strip()
    if not _NANP_SHAPE.fullmatch(s):
        return None
    plus = s.startswith("+")
    body = s[1:] if plus else s
    digits = body.translate(_NOT_DIGITS)
    if len(digits) == 11 and digits[0] == "1" and (plus or region in _NANP_REGIONS):
        return "+" + digits
    if len(digits) == 10 and not plus and region in _NANP_REGIONS and digits[0] not in "01":
        return "+1" + digits
    return None


#: 011 is the North American international prefix; 00 the one ITU-T E.164 recommends
#: and most countries use. Longest first: 011 also starts with 0.
_INTERNATIONAL_PREFIXES = ("011", "00")


def _possible_number(value: str, region: str) -> phonenumbers.PhoneNumber | None:
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    except Exception:  # the parser is not hardened against every odd input
        return None
    return parsed if phonenumbers.is_possible_number(parsed) else None


# --- names --------------------------------------------------------------------


@lru_cache(maxsize=131072)
def fold_text(value: str) -> str:
    """Accent-free, casefolded, punctuation turned into single spaces."""
    if not value:
        return ""
    return _fold_cached(value) if len(value) <= 64 else _fold(value)


@lru_cache(maxsize=131072)
def _fold_cached(value: str) -> str:
    # Names, streets and cities repeat across an organisation's contacts: building an
    # index folds each distinct spelling once.
    return _fold(value)


#: fold_text for plain ASCII: no accents to strip, so one translate does it
_ASCII_FOLD = {
    i: (None if chr(i) in _DROPPED else " ")
    for i in range(128) if chr(i) in _DROPPED or unicodedata.category(chr(i))[0] in "PSZC"
}


def _fold(value: str) -> str:
    if value.isascii():
        return " ".join(value.translate(_ASCII_FOLD).lower().split())
    return _fold_unicode(value)


def _fold_unicode(value: str) -> str:
    s = unicodedata.normalize("NFKD", value)
    s = unicodedata.normalize("NFKD", s.casefold())
    out: list[str] = []
    for ch in s:
        if ch in _DROPPED or unicodedata.combining(ch):
            continue
        cat = unicodedata.category(ch)
        if cat[0] in "PSZC":
            out.append(" ")
        else:
            out.append(ch)
    folded = "".join(out).translate(_FOLD)
    return " ".join(folded.split())


def name_parts(given: str, family: str) -> tuple[str, str]:
    """Normalised (first, last).

    A full name typed into the given-name field (common in mail clients: "Smith,
    John", "Dr. Ann Lee Jr.") is split with nameparser; titles, middle names and
    suffixes are dropped because systems disagree on whether they store them. When
    both fields are filled they are trusted as given.
    """
    given = given or ""
    family = family or ""
    if not family.strip() and (" " in given.strip() or "," in given):
        given, family = _split_full_name(given)
    return fold_text(given), fold_text(family)


def _split_full_name(full: str) -> tuple[str, str]:
    try:
        parsed = HumanName(full)
        first, last = parsed.first, parsed.last
    except Exception:  # nameparser on arbitrary unicode: never let it break a sync
        return full, ""
    if not first and not last:
        return full, ""
    return first, last


def _skeleton(token: str) -> str:
    """A crude phonetic code: first letter, then consonants without repeats.

    Smith/Smyth/Smiht, Jon/John, Mueller/Müller collapse; it only has to be stable
    and order-free, not linguistically right.
    """
    if not token:
        return ""
    out = [token[0]]
    prev = token[0]
    for ch in token[1:]:
        if ch != prev and ch not in "aeiouyhw":
            out.append(ch)
        prev = ch
    return "".join(out)


def company_key(company: str) -> str:
    """Company name without legal-form suffixes: "ACME, Inc." == "Acme"."""
    tokens = fold_text(company).split()
    while len(tokens) > 1 and tokens[-1] in _COMPANY_SUFFIXES:
        tokens.pop()
    return " ".join(tokens)


# --- nicknames ----------------------------------------------------------------


@lru_cache(maxsize=1)
def _nicknamer():
    from nicknames import NickNamer

    return NickNamer()


#: at most this many readings of one given name go into blocking keys
MAX_NAME_FORMS = 4
#: nicknames with another initial a formal name carries as forms (Ivan: John)
MAX_UNLIKE_NICKNAMES = 6


@lru_cache(maxsize=65536)
def given_forms(name: str) -> frozenset[str]:
    """The name and the formal names the `nicknames` table says it can stand for.

    Bob -> {bob, bobby, bert, robert}; Robert -> {robert, bob, bill, billy}: two
    given names are nickname-related when their forms meet. The table lists
    relations in both directions, so there is no single root per name; forms are
    capped (the name itself, then those with the most nicknames) because each
    becomes a blocking key.
    """
    if len(name) < 2:
        return frozenset((name,)) if name else frozenset()
    nn = _nicknamer()
    others = sorted(nn.canonicals_of(name) - {name}, key=lambda c: (-len(nn.nicknames_of(c)), c))
    # A nickname with another initial (Ivan -> John, Christian -> Kit) meets its formal
    # name neither through the capped forms nor through the family + initial key: the
    # formal name carries it as a form of its own.
    unlike = sorted(n for n in nn.nicknames_of(name) if n[:1] != name[:1] and len(n) > 1)
    return frozenset([name, *others[: MAX_NAME_FORMS - 1], *unlike[:MAX_UNLIKE_NICKNAMES]])


@lru_cache(maxsize=65536)
def _related_names(name: str) -> frozenset[str]:
    nn = _nicknamer()
    return frozenset({name, *nn.canonicals_of(name), *nn.nicknames_of(name)})


@lru_cache(maxsize=262144)
def nickname_related(a: str, b: str) -> bool:
    """Whether one given name is a nickname of the other, or both of one formal name
    (the whole table, not the capped forms blocking uses)."""
    if not a or not b or a == b or len(a) < 2 or len(b) < 2:
        return False
    ra, rb = _related_names(a), _related_names(b)
    return b in ra or a in rb or not (ra - {a}).isdisjoint(rb - {b}) and bool(
        _nicknamer().canonicals_of(a) & _nicknamer().canonicals_of(b))


# --- addresses and birthdays --------------------------------------------------

_STREET_WORDS = {
    "street": "st", "str": "st", "strasse": "st", "road": "rd", "avenue": "ave", "av": "ave",
    "boulevard": "blvd", "drive": "dr", "lane": "ln", "place": "pl", "court": "ct", "square": "sq",
    "terrace": "ter", "highway": "hwy", "parkway": "pkwy", "north": "n", "south": "s", "east": "e", "west": "w",
    "apartment": "apt", "suite": "ste", "unit": "apt", "flat": "apt",
}


@dataclass(frozen=True, slots=True)
class NormalizedAddress:
    postal_code: str  # letters and digits only
    number: str  # the first house number in the street line
    street: str  # the street name, abbreviations unified, numbers dropped
    city: str
    country: str


def normalize_address(address) -> NormalizedAddress | None:
    return _normalize_address(address.street, address.city, address.postal_code, address.country)


@lru_cache(maxsize=65536)
def _normalize_address(street_line: str, city: str, postal_code: str, country: str) -> NormalizedAddress | None:
    # Cached by value: households and moved records repeat addresses, and an index
    # build normalises each distinct one once.
    street = fold_text(street_line)
    tokens = [_STREET_WORDS.get(t, t) for t in street.split()]
    number = next((t for t in tokens if t[:1].isdigit()), "")
    name = " ".join(t for t in tokens if not t[:1].isdigit() and t != "apt")
    postal = "".join(ch for ch in fold_text(postal_code) if ch.isalnum())
    out = NormalizedAddress(postal, number, name, fold_text(city), fold_text(country))
    return out if (postal or name or out.city) else None


def parse_birthday(value: str) -> tuple[int | None, int, int] | None:
    """(year or None, month, day) from "YYYY-MM-DD" or "--MM-DD"; None if neither."""
    v = (value or "").strip()
    try:
        if v.startswith("--") and len(v) == 7 and v[4] == "-":
            year, month, day = None, int(v[2:4]), int(v[5:7])
        elif len(v) == 10 and v[4] == "-" and v[7] == "-":
            year, month, day = int(v[:4]), int(v[5:7]), int(v[8:10])
        else:
            return None
    except ValueError:
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return year, month, day


# --- the normalised view of one contact ---------------------------------------


@dataclass(frozen=True, slots=True)
class NormalizedContact:
    """Everything matching needs from a contact, computed once per contact value."""

    emails: frozenset[str]
    phones: frozenset[str]
    first: str  # the first given name (folded); "j" for an initial
    last: str
    middle: str
    nick: str  # the nickname field, folded
    domains: frozenset[str]  # employer domains (non-free) from the emails
    company: str
    addresses: tuple[NormalizedAddress, ...]
    birthday: tuple[int | None, int, int] | None
    keys: frozenset[str]
    name_keys: frozenset[str]  # the subset of `keys` that only names produce
    locals: frozenset[str] = frozenset()  # email local parts (personal-looking ones only)
    house_numbers: frozenset[str] = frozenset()

    @property
    def full_name(self) -> str:
        return f"{self.first} {self.last}".strip()

    @property
    def has_name(self) -> bool:
        return bool(self.first or self.last)


_cache: weakref.WeakKeyDictionary[Contact, dict[str, NormalizedContact]] = weakref.WeakKeyDictionary()
_cache_lock = Lock()

DEFAULT_REGION = "US"

#: bounds on the keys one contact puts in the store's key tables (about 6-14 in practice)
MAX_IDENTIFIER_KEYS = 3  # per kind: emails, phones
MAX_ADDRESS_KEYS = 2


def normalized(contact: Contact, region: str = DEFAULT_REGION) -> NormalizedContact:
    """The normalised view, memoised for as long as the contact object lives.

    Keyed weakly by value (and by the phone region the organisation reads national
    numbers in): scoring one incoming contact against thousands of existing ones
    must not re-parse their phones every time, and a long-running worker must not
    accumulate contacts it has finished with.
    """
    try:
        hit = _cache.get(contact)
    except TypeError:
        hit = None
    if hit is not None and region in hit:
        return hit[region]
    result = _compute(contact, region)
    with _cache_lock:
        try:
            _cache.setdefault(contact, {})[region] = result
        except TypeError:
            pass
    return result


#: particles that begin a family name ("Ó Seanaigh", "de la Vega", "van der Berg"):
#: in the given-name field (the fields swapped) they stay with the name they begin,
#: not read as a first name of one letter and a middle name
NAME_PARTICLES = frozenset({
    "o", "ni", "nic", "mac", "mc", "de", "del", "della", "der", "den", "di", "da", "do", "dos", "das",
    "du", "la", "le", "van", "von", "ter", "ten", "bin", "ibn",
})


def _join_particles(tokens: list[str]) -> list[str]:
    lead = 0
    while lead < len(tokens) - 1 and tokens[lead] in NAME_PARTICLES:
        lead += 1
    return [" ".join(tokens[:lead + 1]), *tokens[lead + 1:]] if lead else tokens


@lru_cache(maxsize=262144)
def _phone_cached(value: str, region: str) -> str | None:
    return normalize_phone(value, region)


#: local parts that name a role, not a person: shared by whoever reads the mailbox
ROLE_LOCALS = frozenset({
    "info", "sales", "support", "contact", "hello", "office", "admin", "team", "mail", "enquiries",
    "billing", "accounts", "hr", "jobs", "careers", "help", "noreply", "no-reply", "marketing", "press",
})


def _compute(contact: Contact, region: str) -> NormalizedContact:
    emails = frozenset(e for e in map(normalize_email, contact.email_addresses()) if e)
    phones = frozenset(p for p in (_phone_cached(v, region) for v in contact.phone_numbers()) if p)
    first, last = name_parts(contact.given_name, contact.family_name)
    first_tokens = _join_particles(first.split())
    middle = fold_text(contact.middle_name) or " ".join(first_tokens[1:2])
    first = first_tokens[0] if first_tokens else ""
    nick = fold_text(contact.nickname)
    if not first and nick:
        first = nick.split()[0]
    domains = frozenset(
        d for d in (e.rsplit("@", 1)[1] for e in emails) if d not in FREE_MAIL_DOMAINS
    )
    locals_ = frozenset(
        loc for loc in (e.rsplit("@", 1)[0].replace(".", "").replace("_", "") for e in emails)
        if len(loc) >= 6 and loc not in ROLE_LOCALS
    )
    addresses = tuple(sorted({a for a in map(normalize_address, contact.addresses) if a is not None},
                             key=lambda a: (a.postal_code, a.number, a.street, a.city, a.country)))
    birthday = parse_birthday(contact.birthday)
    keys = {f"e:{e}" for e in sorted(emails)[:MAX_IDENTIFIER_KEYS]}
    keys |= {f"p:{p}" for p in sorted(phones)[:MAX_IDENTIFIER_KEYS]}
    keys |= {f"a:{a.postal_code}|{a.number}" for a in addresses[:MAX_ADDRESS_KEYS] if a.postal_code and a.number}
    if birthday is not None:
        year, month, day = birthday
        if year is not None:
            keys.add(f"b:{year:04d}-{month:02d}-{day:02d}")
        initial = (first or last)[:1]
        if initial:
            # Survives a missing year, a replaced surname and most given-name typos.
            keys.add(f"bm:{month:02d}-{day:02d}|{initial}")
    name_keys = _name_keys(first, last)
    if last:
        keys.update(f"d:{d}|{last.replace(' ', '')}" for d in sorted(domains)[:1])
    keys |= name_keys
    return NormalizedContact(
        emails=emails, phones=phones, first=first, last=last, middle=middle, nick=nick,
        domains=domains, company=company_key(contact.company), addresses=addresses, birthday=birthday,
        keys=frozenset(keys), name_keys=name_keys, locals=locals_,
        house_numbers=frozenset(a.number for a in addresses if a.number),
    )


@lru_cache(maxsize=131072)
def _name_keys(first: str, last: str) -> frozenset[str]:
    """Name blocking keys that survive one typo in either name, swapped fields, and initials.

    Each key pairs one name in full with two letters of the other (its first two
    and its last two): a typo in one name leaves the keys built on the other's full
    spelling intact, and one typo cannot touch both ends of a name of four letters
    or more. Keys are made in both directions (given+family, family+given), so a
    record with the fields swapped has the same set. `k:` pairs the family name with
    each nickname form of the given name (Bob and Robert Smith both have
    k:smith|robert), `i:` (family + initial) catches a given name reduced to its
    initial, and `m:` (the metaphone codes of both names, sorted) names that sound
    alike with more than one letter changed. At most 4 n:, 1 i:, 8 k:, 1 m: keys.
    """
    keys: set[str] = set()
    f, l = first.replace(" ", ""), last.replace(" ", "")
    if not f or not l:
        return frozenset()
    for full, other in ((l, f), (f, l)):
        if len(full) < 2:
            continue
        keys.add(f"n:{full}|{other[:2]}")
        keys.add(f"n:{full}|{other[-2:]}")
    if len(l) > 1:
        keys.add(f"i:{l}|{f[0]}")
        if len(f) > 1:
            keys.update(f"k:{l}|{form}" for form in given_forms(first.split()[0]))
    if len(f) > 1 and len(l) > 1:
        keys.update(f"k:{f}|{form}" for form in given_forms(last.split()[0]))  # the fields swapped
        # Sounds-alike in both names at once (Jon Smyth / John Smith), in either order.
        keys.add("m:" + " ".join(sorted((_metaphone(first.split()[0]), _metaphone(l)))))
    return frozenset(keys)


@lru_cache(maxsize=65536)
def _metaphone(token: str) -> str:
    return jellyfish.metaphone(token) or token


def blocking_keys(contact: Contact, region: str = DEFAULT_REGION) -> set[str]:
    """Keys whose equality makes two contacts worth scoring (at most about 15).

    e:<email>, p:<E.164> (at most 3 of each), a:<postcode>|<house number> (at most 2),
    b:<birthday>, bm:<month-day>|<initial>, d:<employer domain>|<last>, and the
    name keys of `_name_keys` (n:, i:, k:, m:). `sync.matching.score` only reaches the review band when two
    contacts share a key, so the keys lose no pair that scoring would propose
    (blocks capped for size aside).
    """
    return set(normalized(contact, region).keys)


# --- malformed input ----------------------------------------------------------

_MULTILINE_FIELDS = frozenset({"notes"})


def contact_problems(contact: Contact, *, max_field_len: int = 1000) -> list[str]:
    """What is wrong with a contact as received, one message per problem.

    Messages name the field, never its content: they end up in quarantine lists
    and logs, where personal data must not.
    """
    problems: list[str] = []
    values: list[tuple[str, str]] = [(f, getattr(contact, f)) for f in SCALAR_FIELDS]
    values += [(f"emails[{i}]", e) for i, e in enumerate(contact.email_addresses())]
    values += [(f"phones[{i}]", p) for i, p in enumerate(contact.phone_numbers())]
    broken: set[str] = set()
    for name, value in values:
        if len(value) > max_field_len:
            problems.append(f"{name} is too long ({len(value)} characters; the limit is {max_field_len})")
        problem = _text_problem(value, multiline=name in _MULTILINE_FIELDS)
        if problem:
            broken.add(name)
            problems.append(f"{name} {problem}")
    for i, email in enumerate(contact.email_addresses()):
        name = f"emails[{i}]"
        if name in broken:
            continue
        reason = email_problem(email)
        if reason:
            problems.append(f"{name} is not a valid email address: {reason}")
    for i, phone in enumerate(contact.phone_numbers()):
        if f"phones[{i}]" not in broken and sum(ch.isdigit() for ch in phone) < 3:
            problems.append(f"phones[{i}] does not contain a phone number")
    if contact.birthday and not _BIRTHDAY.fullmatch(contact.birthday):
        # a date no mailbox can hold: written, it would clear the birthday there
        problems.append("birthday is not a date (YYYY-MM-DD, or --MM-DD without a year)")
    if contact.is_empty():
        problems.append("the contact is empty: no name, email, phone or company")
    elif not (contact.given_name or contact.family_name or contact.emails or contact.phones or contact.company):
        problems.append("the contact has no name, email, phone or company to identify it")
    return problems


_BIRTHDAY = re.compile(r"(?:\d{4}|-)-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])")

#: Bidirectional embeddings, overrides and isolates: in a name they make the text
#: display differently from what it is (a "Trojan Source" spoof). Free-text notes may
#: carry them legitimately (mixed right-to-left text pasted from documents).
_BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def _text_problem(value: str, *, multiline: bool) -> str | None:
    allowed = "\t\n\r" if multiline else "\t"
    for ch in value:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return "contains broken unicode (a lone surrogate)"
        if ch in _BIDI_CONTROLS and not multiline:
            return f"contains a bidirectional control character (U+{code:04X})"
        if ch == "\ufffd":
            return "contains U+FFFD replacement characters (it was decoded with errors upstream)"
        if unicodedata.category(ch) == "Cc" and ch not in allowed:
            return f"contains a control character (U+{code:04X})"
    return None
