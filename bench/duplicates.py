"""A corrupted-record generator: people, and the duplicate records real systems hold of them.

Modelled on how duplicates arise in practice (the corruption kinds of standard
record-linkage test generators such as FEBRL and GeCo): a record typed again in
another system or years later carries one-letter typos, swapped given and family
fields, missing name parts (a given name cut to its initial, a lost middle name),
a replaced family name (marriage), a nickname for the given name, a moved postal
address, a phone in another layout or a new one, another email address, a birthday
without its year or with a slip. The population also holds households (a partner
or child with the same family name, address and landline) because those, not
random strangers, are what a matcher must not merge. Names are drawn as often as
real people carry them (bench/names.py: census-like frequencies with a long tail),
since the number of namesakes in a pool decides what names alone can tell.

Everything is deterministic for a seed. `CONFIGS` names the field sets the
benchmark reports separately: names only; names with emails and phones; names
with a postal address and birthday.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bench.names import draw_name
from emulators.people_data import _reformat_phone, _email_variant, _typo, make_people
from models.contact import Contact, PostalAddress

#: field sets reported separately (projections of one generated world)
CONFIGS: dict[str, tuple[str, ...]] = {
    "names": ("given_name", "family_name", "middle_name", "nickname"),
    "names_ids": ("given_name", "family_name", "middle_name", "nickname", "emails", "phones", "company"),
    "names_addr_bday": ("given_name", "family_name", "middle_name", "nickname", "addresses", "birthday"),
}

_STREETS = (
    "Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Church", "High",
    "Mill", "Station", "Victoria", "King", "Queen", "Bridge", "River", "Forest", "Sunset", "Highland",
    "Jefferson", "Lincoln", "Madison", "Franklin", "Chestnut", "Walnut", "Spruce", "Willow", "Meadow",
    "Garden", "Market", "Union", "Spring", "Center", "Ridge", "Valley", "Prospect", "Lindenstraße",
    "Hauptstraße", "Rue de la Paix", "Via Roma", "Kungsgatan", "Baker", "Harbour", "Orchard", "Grove",
)
_SUFFIXES = (("Street", "St"), ("Avenue", "Ave"), ("Road", "Rd"), ("Lane", "Ln"), ("Drive", "Dr"), ("", ""))
_MIDDLE = ("Ann", "Marie", "Lee", "James", "Lynn", "Michael", "Rose", "Paul", "Jane", "Edward", "Grace", "Alan")


def _cities(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(city, region, postcode prefix) for `n` made-up towns."""
    out = []
    for i in range(n):
        out.append((f"{rng.choice(_STREETS)}{rng.choice(('ton', 'ville', 'field', 'burg', 'ford', ' City'))}",
                    rng.choice(("CA", "NY", "TX", "WA", "MA", "IL", "FL", "OR")), f"{10000 + i * 7:05d}"[:5]))
    return out


def _address(rng: random.Random, cities: list, kind: str = "home") -> PostalAddress:
    city, region, postal = rng.choice(cities)
    name = rng.choice(_STREETS)
    suffix = rng.choice(_SUFFIXES)[rng.randrange(2)]
    street = f"{rng.randint(1, 2400)} {name} {suffix}".strip()
    if rng.random() < 0.1:
        street += f" Apt {rng.randint(1, 40)}"
    return PostalAddress(type=kind, street=street, city=city, region=region, postal_code=postal, country="US")


def _birthday(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.10:
        return ""
    month, day = rng.randint(1, 12), rng.randint(1, 28)
    if roll < 0.15:
        return f"--{month:02d}-{day:02d}"
    return f"{rng.randint(1940, 2004):04d}-{month:02d}-{day:02d}"


def make_population(n: int, seed: int) -> list[Contact]:
    """`n` people with every field; about 8 % are household members of another entry."""
    rng = random.Random(seed * 7919 + 1)
    base = make_people(n, seed, draw_name=draw_name)
    cities = _cities(rng, max(20, n // 400))
    out: list[Contact] = []
    for person in base:
        extra: dict = {
            "birthday": _birthday(rng),
            "middle_name": rng.choice(_MIDDLE) if rng.random() < 0.3 else "",
            "addresses": [_address(rng, cities)] if rng.random() < 0.9 else [],
        }
        if rng.random() < 0.08 and out:
            # A household member: the family name, home and landline of someone already here.
            other = out[rng.randrange(len(out))]
            first = draw_name(rng)[0]
            if first == other.given_name:
                first = draw_name(rng)[0]
            extra.update(given_name=first, family_name=other.family_name, addresses=list(other.addresses))
            if other.phones and rng.random() < 0.5:
                extra["phones"] = [other.phones[0], *person.phones[:1]]
        out.append(Contact.model_validate({**person.model_dump(), **extra}))
    return out


# --- corruption ------------------------------------------------------------------

CORRUPTIONS: tuple[str, ...] = (
    "typo_given", "typo_family", "swap_names", "initial_given", "drop_middle", "replace_family",
    "nickname", "move_address", "drop_address", "reformat_phone", "new_phone", "drop_phone",
    "email_variant", "new_email", "drop_email", "birthday_no_year", "birthday_slip", "drop_birthday",
    "drop_company", "change_company", "identifiers_only",
)


def _nick(rng: random.Random, given: str) -> str | None:
    from nicknames import NickNamer

    options = sorted(NickNamer().nicknames_of(given.casefold()))
    if not options:
        return None
    return rng.choice(options).capitalize()


def corrupt(contact: Contact, rng: random.Random, kinds: list[str] | None = None,
            cities: list | None = None) -> tuple[Contact, list[str]]:
    """A duplicate record of `contact` with the named corruptions (or a random realistic mix)."""
    if kinds is None:
        kinds = _draw(rng)
    d = contact.model_dump()
    # Plain strings (typed emails and phones dump as objects when they carry a type).
    d["emails"], d["phones"] = list(contact.email_addresses()), list(contact.phone_numbers())
    applied: list[str] = []
    for kind in kinds:
        if _apply(kind, d, rng, cities or _DEFAULT_CITIES):
            applied.append(kind)
    return Contact.model_validate(d), applied


_DEFAULT_CITIES = _cities(random.Random(0), 50)

#: how often each corruption happens to a duplicate record (independently)
RATES: dict[str, float] = {
    "typo_given": 0.12, "typo_family": 0.12, "swap_names": 0.06, "initial_given": 0.05, "drop_middle": 0.3,
    "replace_family": 0.05, "nickname": 0.10, "move_address": 0.15, "drop_address": 0.08,
    "reformat_phone": 0.9, "new_phone": 0.08, "drop_phone": 0.12, "email_variant": 0.6, "new_email": 0.12,
    "drop_email": 0.10, "birthday_no_year": 0.05, "birthday_slip": 0.03, "drop_birthday": 0.08,
    "drop_company": 0.2, "change_company": 0.08, "identifiers_only": 0.03,
}


def _draw(rng: random.Random) -> list[str]:
    return [k for k in CORRUPTIONS if rng.random() < RATES[k]]


def _apply(kind: str, d: dict, rng: random.Random, cities: list) -> bool:
    g, f = d["given_name"], d["family_name"]
    if kind == "typo_given" and len(g) >= 4:
        d["given_name"] = _typo(rng, g)
    elif kind == "typo_family" and len(f) >= 4:
        d["family_name"] = _typo(rng, f)
    elif kind == "swap_names" and g and f:
        d["given_name"], d["family_name"] = f, g
    elif kind == "initial_given" and g:
        d["given_name"] = g[0] + "."
    elif kind == "drop_middle" and d["middle_name"]:
        d["middle_name"] = ""
    elif kind == "replace_family" and f:
        d["family_name"] = rng.choice(("Miller", "Okafor", "Bauer", "Larsen", "Moreau", "Tanaka", "Quinn", "Holt",
                                       "Brennan", "Varga", "Lindqvist", "Castellano"))
    elif kind == "nickname" and g and (nick := _nick(rng, g)):
        d["given_name"] = nick
    elif kind == "move_address" and d["addresses"]:
        d["addresses"] = [_address(rng, cities).model_dump()]
    elif kind == "drop_address" and d["addresses"]:
        d["addresses"] = []
    elif kind == "reformat_phone" and d["phones"]:
        d["phones"] = [_reformat_phone(rng, p) for p in d["phones"]]
    elif kind == "new_phone" and d["phones"]:
        d["phones"] = [f"+1 {rng.randint(201, 989)} {rng.randint(200, 999)} {rng.randint(0, 9999):04d}"]
    elif kind == "drop_phone" and d["phones"]:
        d["phones"] = []
    elif kind == "email_variant" and d["emails"]:
        d["emails"] = [_email_variant(rng, e) for e in d["emails"]]
    elif kind == "new_email" and d["emails"]:
        local = "".join(ch for ch in (g or "x").casefold() if ch.isalpha())[:8] or "x"
        d["emails"] = [f"{local}{rng.randint(100, 99999)}@{rng.choice(('gmail.com', 'outlook.com', 'newjob.io'))}"]
    elif kind == "drop_email" and len(d["emails"]) > 1:
        d["emails"] = d["emails"][1:]
    elif kind == "birthday_no_year" and len(d["birthday"]) == 10:
        d["birthday"] = "--" + d["birthday"][5:]
    elif kind == "birthday_slip" and len(d["birthday"]) == 10:
        y, m, day = d["birthday"].split("-")
        if rng.random() < 0.5 and int(day) <= 12 and day != m:
            d["birthday"] = f"{y}-{day}-{m}"  # day and month read the other way round
        else:
            d["birthday"] = f"{int(y) + rng.choice((-1, 1)):04d}-{m}-{day}"
    elif kind == "drop_birthday" and d["birthday"]:
        d["birthday"] = ""
    elif kind == "drop_company" and d["company"]:
        d["company"] = ""
    elif kind == "identifiers_only" and (d["emails"] or d["phones"]):
        # What a mail client saves on its own: the address someone wrote from, no name.
        d.update(given_name="", family_name="", middle_name="", nickname="", addresses=[], birthday="")
    elif kind == "change_company" and d["company"]:
        d["company"] = rng.choice(("Northwind Traders", "Contoso Ltd", "Fabrikam Inc.", "Globex", "Initech",
                                   "Umbrella Corp.", "Hooli", "Vandelay Industries"))
    else:
        return False
    return True


def project(contact: Contact, fields: tuple[str, ...]) -> Contact:
    """The contact with only `fields` kept (one benchmark configuration)."""
    return Contact.model_validate({k: v for k, v in contact.model_dump().items() if k in fields})


@dataclass
class Workload:
    pool: dict[str, Contact]
    incoming: list[Contact]
    #: incoming position -> the person it duplicates (absent: a new person)
    truth: dict[int, int]
    #: pool key -> person
    person_of: dict[str, int]
    #: person -> their pool keys (two for the people the pool already holds twice)
    records_of: dict[int, list[str]] = field(default_factory=dict)

    def project(self, fields: tuple[str, ...]) -> "Workload":
        """The same world with only `fields` on every record.

        An incoming record left empty (a nameless contact of only an email, in a
        field set without emails) is dropped: the sync rejects empty contacts as
        malformed, so no matcher sees it.
        """
        incoming: list[Contact] = []
        truth: dict[int, int] = {}
        for pos, c in enumerate(self.incoming):
            p = project(c, fields)
            if p.is_empty():
                continue
            if pos in self.truth:
                truth[len(incoming)] = self.truth[pos]
            incoming.append(p)
        return Workload({k: project(c, fields) for k, c in self.pool.items()}, incoming, truth, self.person_of,
                        self.records_of)


def make_workload(existing: int, incoming: int, seed: int, fields: tuple[str, ...] | None = None, *,
                  duplicate_share: float = 0.2, pool_cluster_share: float = 0.03) -> Workload:
    """`existing` people in the pool (a few held twice: clusters) and `incoming` records,
    `duplicate_share` of them corrupted copies of pool people, the rest new people.

    Corruption happens on the full records, so `Workload.project` gives each field
    set the same duplicates.
    """
    rng = random.Random(seed)
    n_dup = int(incoming * duplicate_share)
    people = make_population(existing + incoming - n_dup, seed)
    cities = _cities(random.Random(seed + 5), max(20, existing // 400))
    pool: dict[str, Contact] = {}
    person_of: dict[str, int] = {}
    records_of: dict[int, list[str]] = {}
    for i in range(existing):
        key = f"crm-{i:06d}"
        pool[key] = people[i]
        person_of[key] = i
        records_of[i] = [key]
    for j, i in enumerate(rng.sample(range(existing), int(existing * pool_cluster_share))):
        key = f"crm-dup-{j:05d}"
        pool[key] = corrupt(people[i], rng, cities=cities)[0]
        person_of[key] = i
        records_of[i].append(key)
    truth: dict[int, int] = {}
    out: list[Contact] = []
    sources = rng.sample(range(existing), n_dup)
    slots = set(rng.sample(range(incoming), n_dup))
    fresh = iter(people[existing:])
    src = iter(sources)
    for pos in range(incoming):
        if pos in slots:
            person = next(src)
            out.append(corrupt(people[person], rng, cities=cities)[0])
            truth[pos] = person
        else:
            out.append(next(fresh))
    world = Workload(pool, out, truth, person_of, records_of)
    return world.project(fields) if fields is not None else world
