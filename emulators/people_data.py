"""Synthetic but realistic contacts for the demo, the tests and the benchmarks: names with accents and particles,
work and personal addresses, phones in many national formats, companies with
domains. Deterministic for a seed so figures are comparable between runs.

`make_near_duplicate` produces what real duplicate records look like: the same
person typed again elsewhere (Gmail dots, case, plus tags, a reformatted phone,
a lost accent or a typo, fields swapped or a full name in one field).
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable

from models.contact import Contact, PostalAddress

FIRST_NAMES = (
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Nancy Daniel Lisa "
    "Matthew Betty Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily "
    "Andrew Donna Joshua Michelle Kenneth Dorothy Kevin Carol Brian Amanda George Melissa "
    "Timothy Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia "
    "Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen Brenda Larry "
    "Pamela Justin Emma Scott Nicole Brandon Helen Benjamin Samantha Samuel Katherine Gregory "
    "Christine Alexander Debra Frank Rachel Patrick Carolyn Raymond Janet Jack Catherine "
    "Dennis Maria Jerry Heather Tyler Diane Aaron Ruth Jose Julie Adam Olivia Nathan Joyce "
    "Henry Virginia Zachary Victoria Douglas Kelly Peter Lauren Kyle Christina Noah Joan "
    "Ethan Evelyn Jeremy Judith Walter Megan Christian Andrea Keith Cheryl Roger Hannah "
    "Terry Jacqueline Austin Martha Sean Gloria Gerald Teresa Carl Ann Harold Sara Dylan "
    "Madison Arthur Frances Lawrence Kathryn Jordan Janice Jesse Jean Bryan Abigail Billy "
    "Alice Bruce Judy Gabriel Sophia Joe Grace Logan Denise Alan Amber Juan Doris Albert "
    "Marilyn Willie Danielle Elijah Beverly Wayne Isabella Randy Theresa Vincent Diana "
    "Mason Natalie Roy Brittany Ralph Charlotte Bobby Marie Russell Kayla Bradley Alexis "
    "José María François Zoë Renée Björn Søren Łukasz Jürgen Chloé Inés Agnès Ángel "
    "Noémie Émile Hélène Zoltán Ólafur Dagný Çelik Siobhán Seán Niamh Wei Mei Hiroshi "
    "Yuki Priya Arjun Aditya Fatima Omar Ahmed Layla Mohammed Chen Li Ngozi Chidi Kwame "
    "Ana Lucía Mateo Santiago Valentina Camila Luca Giulia Matteo Francesca Lars Ingrid "
    "Sven Astrid Pieter Annelies Jan Katarzyna Piotr Magdalena Dmitri Olga Ivan Tatiana"
).split()

_LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
    "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott "
    "Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter "
    "Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart "
    "Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed "
    "Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray "
    "Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez "
    "Powell Jenkins Perry Russell Sullivan Bell Coleman Butler Henderson Barnes Gonzales "
    "Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds "
    "Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar "
    "Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington "
    "Kennedy Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson "
    "Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Muñoz Hunt Hicks Holmes "
    "Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice "
    "Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant "
    "Dunn Kelley Spencer Hawkins Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley "
    "Knight Elliott Cunningham Duncan Armstrong Hudson Carroll Lane Riley Andrews Alvarado "
    "Ray Delgado Berry Perkins Hoffman Johnston Matthews Peña Richards Willis Carpenter "
    "Lawrence Sandoval García Müller Schäfer Köhler Weiß Jäger Lefèvre Dubois Moreau "
    "Fontaine Bélanger Côté Gagné Østergaard Søndergaard Nowak Wójcik Kowalczyk Dvořák "
    "Novák Horváth Nagy Szabó Yılmaz Öztürk O'Brien O'Connor McCarthy Ní_Bhriain Da_Silva "
    "De_la_Vega Van_der_Berg Von_Trapp Dos_Santos Rossi Russo Ferrari Esposito Bianchi "
    "Romano Colombo Ricci Marino Greco Bruno Gallo Conti Costa Giordano Mancini Lombardi "
    "Andersson Johansson Karlsson Nilsson Eriksson Larsson Olsen Hansen Jensen Nielsen "
    "Tanaka Suzuki Takahashi Watanabe Ito Yamamoto Nakamura Wang Zhang Liu Yang Huang Zhao "
    "Wu Zhou Xu Sun Ma Zhu Hu Guo He Lin Singh Kumar Sharma Gupta Shah Mehta Iyer Reddy "
    "Okafor Okonkwo Mensah Boateng Adeyemi Haddad Khalil Nasser Mansour Cohen Levi Friedman"
).split()
LAST_NAMES = tuple(n.replace("_", " ") for n in _LAST)


def _skewed(names: tuple[str, ...] | list[str]) -> list[float]:
    # Real name frequencies are long-tailed (Smith is everywhere): weight by rank
    # so that common-surname blocks grow large enough to exercise the index cap.
    total, cum = 0.0, []
    for rank in range(len(names)):
        total += 1.0 / (rank + 8)
        cum.append(total)
    return cum


_FIRST_CUM = _skewed(FIRST_NAMES)
_LAST_CUM = _skewed(LAST_NAMES)

_COMPANY_A = (
    "Acme Globex Initech Umbrella Stark Wayne Wonka Hooli Vandelay Soylent Cyberdyne Tyrell "
    "Aperture Massive Dynamic Oscorp Pied Piper Gringotts Monarch Blue Sun Nakatomi Virtucon "
    "Northwind Contoso Fabrikam Adventure Tailspin Litware Proseware Wingtip Fourth Coffee "
    "Alpine Summit Harbor Cedar Granite Silver Maple Redwood Orion Atlas Nimbus Vertex Quantum "
    "Beacon Pioneer Horizon Sterling Crescent Evergreen Falcon Keystone Lighthouse Meridian"
).split()
_COMPANY_B = (
    "Logistics Software Labs Analytics Health Capital Partners Consulting Robotics Foods "
    "Energy Systems Media Studios Bank Insurance Pharma Networks Ventures Holdings Works "
    "Dynamics Solutions Retail Foods Motors Aerospace Legal Design Group Industries"
).split()
_LEGAL = ("", "", "", " Inc.", " LLC", " Ltd", " GmbH", " S.A.", ", Inc.", " Corp.")
_FREE = ("gmail.com", "gmail.com", "gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com", "proton.me", "gmx.de", "web.de", "orange.fr", "aol.com")
_TLDS = ("com", "com", "com", "io", "co", "de", "fr", "co.uk", "net", "ai")
_US_AREAS = (201, 202, 206, 212, 213, 303, 305, 312, 404, 408, 415, 503, 512, 617, 646, 702, 718, 805, 917, 949)


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    out = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return out.translate(str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "ß": "ss", "ı": "i"}))


def _slug(text: str) -> str:
    return "".join(ch for ch in _ascii(text).lower() if ch.isalnum())


def _companies(rng: random.Random, n: int) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        base = f"{rng.choice(_COMPANY_A)} {rng.choice(_COMPANY_B)}"
        domain = f"{_slug(base)}.{rng.choice(_TLDS)}"
        if domain in seen:
            base = f"{base} {rng.choice(('North', 'West', 'Global', 'Pacific', 'Nordic', 'Europe'))}"
            domain = f"{_slug(base)}.{rng.choice(_TLDS)}"
            if domain in seen:
                continue
        seen.add(domain)
        out.append((base + rng.choice(_LEGAL), domain))
    return out


def _phone(rng: random.Random) -> tuple[str, str, str]:
    """(country, national digits, a formatted rendering) of a plausible number."""
    roll = rng.random()
    if roll < 0.7:
        area = rng.choice(_US_AREAS)
        number = f"{area}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        return "1", number, format_phone("1", number, rng)
    if roll < 0.8:
        number = f"20{rng.randint(10_000_000, 99_999_999)}"
        return "44", number, format_phone("44", number, rng)
    if roll < 0.9:
        number = f"30{rng.randint(1_000_000, 9_999_999)}"
        return "49", number, format_phone("49", number, rng)
    number = f"{rng.choice((1, 6, 7))}{rng.randint(10_000_000, 99_999_999)}"
    return "33", number, format_phone("33", number, rng)


def format_phone(country: str, national: str, rng: random.Random) -> str:
    """One of the many ways people write the same number."""
    if country == "1":
        a, b, c = national[:3], national[3:6], national[6:]
        return rng.choice(
            (f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"+1-{a}-{b}-{c}", f"1 ({a}) {b}-{c}", f"+1{national}", f"{a}{b}{c}")
        )
    trunk = "0" + national
    spaced = " ".join(national[i : i + 2] for i in range(0, len(national), 2))
    return rng.choice((f"+{country} {national}", f"+{country} {spaced}", f"00{country} {national}", f"+{country} (0){national}", f"+{country}{national}"))


def _email_local(rng: random.Random, first: str, last: str) -> str:
    f, l = _slug(first), _slug(last)
    return rng.choice((f"{f}.{l}", f"{f}{l}", f"{f[0]}{l}", f"{f}_{l}", f"{f}", f"{l}.{f}", f"{f}.{l}{rng.randint(1, 99)}"))


def make_people(n: int, seed: int, draw_name: Callable[[random.Random], tuple[str, str]] | None = None,
                ) -> list[Contact]:
    """`n` distinct people; no two share an email address or phone number.

    `draw_name(rng) -> (given, family)` replaces the built-in short name lists (the
    matching benchmark draws names as often as real people carry them).
    """
    rng = random.Random(seed)
    companies = _companies(rng, max(50, n // 40))
    used_emails: set[str] = set()
    used_phones: set[tuple[str, str]] = set()
    people: list[Contact] = []
    for _ in range(n):
        if draw_name is None:
            first = rng.choices(FIRST_NAMES, cum_weights=_FIRST_CUM)[0]
            last = rng.choices(LAST_NAMES, cum_weights=_LAST_CUM)[0]
        else:
            first, last = draw_name(rng)
        emails: list[str] = []
        company, domain = rng.choice(companies) if rng.random() < 0.75 else ("", "")
        if domain and rng.random() < 0.8:
            emails.append(_unique(rng, used_emails, first, last, domain))
        if not emails or rng.random() < 0.35:
            emails.append(_unique(rng, used_emails, first, last, rng.choice(_FREE)))
        phones: list[str] = []
        for _ in range(rng.choice((0, 1, 1, 1, 2))):
            for _attempt in range(10):
                country, national, rendered = _phone(rng)
                if (country, national) not in used_phones:
                    used_phones.add((country, national))
                    phones.append(rendered)
                    break
        people.append(
            Contact(
                given_name=first,
                family_name=last,
                emails=emails,
                phones=phones,
                company=company,
                job_title=rng.choice(("", "", "CTO", "Account Executive", "Engineer", "Head of Sales", "Recruiter")),
            )
        )
    return people


_STREETS = ("Main St", "High Street", "Rue de la Paix", "Hauptstraße", "Oak Avenue", "Calle Mayor", "King's Road",
            "Via Roma", "Elm Street", "Baker Street")
_CITIES = (("Springfield", "IL", "62701", "US"), ("London", "", "SW1A 1AA", "GB"), ("Paris", "", "75002", "FR"),
           ("Berlin", "", "10115", "DE"), ("Madrid", "", "28013", "ES"), ("Austin", "TX", "73301", "US"))
_DEPARTMENTS = ("", "", "Sales", "Engineering", "Finance", "Marketing", "Operations", "Legal")
_PREFIXES = ("", "", "", "", "Dr.", "Ms.", "Mr.", "Prof.")
_SUFFIXES = ("", "", "", "", "", "Jr.", "PhD", "III")
_TIERS = ("gold", "silver", "bronze")


def enrich(contact: Contact, rng: random.Random) -> Contact:
    """The same person with the rest of what address books keep: typed emails (a work
    domain is work, a free one home) and phones, a middle name, a prefix or suffix,
    a nickname, addresses, a birthday (sometimes without a year), a department,
    a website and a custom field. Separate from `make_people`, whose output the
    matching benchmarks fix by seed."""
    emails = [{"address": e, "type": "home" if e.rsplit("@", 1)[-1] in _FREE else "work"}
              for e in contact.email_addresses()]
    phones = [{"number": p, "type": rng.choice(("work", "mobile", "mobile", "home", "other"))}
              for p in contact.phone_numbers()]
    addresses = []
    for kind in rng.sample(("home", "work", "other"), rng.choice((0, 1, 1, 2, 3))):
        city, region, code, country = rng.choice(_CITIES)
        addresses.append(PostalAddress(type=kind, street=f"{rng.randint(1, 250)} {rng.choice(_STREETS)}", city=city,
                                       region=region, postal_code=code, country=country))
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    birthday = rng.choice(("", f"{rng.randint(1950, 2000)}-{month:02d}-{day:02d}", f"--{month:02d}-{day:02d}"))
    domain = next((e["address"].rsplit("@", 1)[-1] for e in emails if e["type"] == "work"), "")
    return contact.model_copy(update={
        "emails": emails, "phones": phones, "addresses": addresses, "birthday": birthday,
        "middle_name": rng.choice(("", "", "", "Marie", "James", "Lee", "Anne")),
        "prefix": rng.choice(_PREFIXES), "suffix": rng.choice(_SUFFIXES),
        "nickname": rng.choice(("", "", "", contact.given_name[:3])),
        "department": rng.choice(_DEPARTMENTS) if contact.company else "",
        "websites": [f"https://www.{domain}"] if domain and rng.random() < 0.5 else [],
        "custom": [f"tier={rng.choice(_TIERS)}"] if rng.random() < 0.3 else [],
    })


def make_rich_people(n: int, seed: int) -> list[Contact]:
    """`make_people(n, seed)`, each person `enrich`ed (deterministic for a seed)."""
    rng = random.Random(seed ^ 0x5EED)
    return [enrich(c, rng) for c in make_people(n, seed)]


def _unique(rng: random.Random, used: set[str], first: str, last: str, domain: str) -> str:
    local = _email_local(rng, first, last)
    candidate = f"{local}@{domain}"
    while _mailbox(candidate) in used:
        candidate = f"{local}{rng.randint(1, 9999)}@{domain}"
    used.add(_mailbox(candidate))
    return candidate


def _mailbox(address: str) -> str:
    # Uniqueness as the provider sees it (Gmail ignores dots), so two generated
    # people never own the same mailbox.
    local, domain = address.lower().split("@")
    return f"{local.replace('.', '')}@{domain}" if domain == "gmail.com" else f"{local}@{domain}"


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.random()
    if kind < 0.4:  # transposition
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind < 0.7:  # deletion
        return word[:i] + word[i + 1 :]
    return word[:i] + rng.choice("aeinorst") + word[i + 1 :]  # substitution


def _email_variant(rng: random.Random, address: str) -> str:
    if address.count("@") != 1:
        return address
    local, domain = address.split("@")
    choice = rng.random()
    if domain == "gmail.com" and choice < 0.3:
        if "." in local:
            local = local.replace(".", "")
        else:
            cut = rng.randrange(1, len(local)) if len(local) > 1 else 1
            local = local[:cut] + "." + local[cut:]
    elif domain in ("gmail.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me") and choice < 0.6:
        local = f"{local}+{rng.choice(('crm', 'news', 'work', 'sales'))}"
    elif choice < 0.8:
        local = local.capitalize() if rng.random() < 0.5 else local.upper()
    if domain == "gmail.com" and rng.random() < 0.1:
        domain = "googlemail.com"
    if rng.random() < 0.3:
        domain = domain.upper()
    return f"{local}@{domain}"


def _reformat_phone(rng: random.Random, phone: str) -> str:
    import phonenumbers

    try:
        parsed = phonenumbers.parse(phone, "US")
    except phonenumbers.NumberParseException:
        return phone  # not a number we can re-render: copied as it was
    return format_phone(str(parsed.country_code), str(parsed.national_number), rng)


def make_near_duplicate(contact: Contact, rng: random.Random) -> Contact:
    """The same person as another system or another day would have recorded them.

    Identifiers are usually kept with formatting variants; sometimes one is lost
    (a new address, no phone), as happens in real data, so not every near-duplicate
    is findable with certainty.
    """
    given, family = contact.given_name, contact.family_name
    emails = list(contact.email_addresses())
    phones = list(contact.phone_numbers())
    company = contact.company

    emails = [_email_variant(rng, e) if rng.random() < 0.7 else e for e in emails]
    phones = [_reformat_phone(rng, p) for p in phones]
    if rng.random() < 0.25 and (phones or len(emails) > 1):
        emails = emails[1:] if len(emails) > 1 else []  # lost the other address
    if rng.random() < 0.15 and emails:
        phones = []
    roll = rng.random()
    if roll < 0.15:
        given, family = _ascii(given), _ascii(family)
    elif roll < 0.30:
        if rng.random() < 0.5:
            given = _typo(rng, given)
        else:
            family = _typo(rng, family)
    elif roll < 0.38:
        given, family = family, given
    elif roll < 0.48:
        given, family = f"{family}, {given}", ""
    elif roll < 0.56:
        given, family = f"{given} {family}", ""
    elif roll < 0.62:
        given, family = given.upper(), family.upper()
    if rng.random() < 0.2:
        company = ""
    return Contact(given_name=given, family_name=family, emails=emails, phones=phones, company=company)
