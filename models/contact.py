"""The canonical contact: the one shape both ends are translated into.

Connectors translate provider payloads (a People `Person`, a Graph `contact`, a CRM
row) into `Contact` and back. Merging, matching and hashing only ever see this
shape, so a new provider is a translation, not a change to the sync core.

Multi-valued fields (emails, phones) are sets: order carries no meaning on either
side and set semantics make three-way merges conflict-free for them.

Emails and phones are typed (work, home, mobile, other; an email also has a display
name). An entry without type or name serialises as the bare string it was before
types existed, so stored snapshots still read and an untyped contact keeps the
content hash it had (a changed hash would look like an edit of every record).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, field_validator, model_serializer, model_validator

from models.record import SideRecord, content_hash


SCALAR_FIELDS: tuple[str, ...] = ("given_name", "family_name", "company", "job_title", "notes", "prefix",
                                   "middle_name", "suffix", "nickname", "department", "birthday")
SET_FIELDS: tuple[str, ...] = ("emails", "phones", "addresses", "websites", "custom")
FIELDS: tuple[str, ...] = SCALAR_FIELDS + SET_FIELDS


def _unique(value: object, *, key) -> tuple[str, ...]:
    """Sorted, one value per key (the first in sort order), so equal sets compare and hash equal."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    chosen: dict[str, str] = {}
    for v in sorted(str(x).strip() for x in value):
        if v:
            chosen.setdefault(key(v), v)
    return tuple(sorted(chosen.values()))


#: the types a canonical email or phone can carry ("" = not typed)
EMAIL_TYPES: tuple[str, ...] = ("", "work", "home", "other")
PHONE_TYPES: tuple[str, ...] = ("", "work", "home", "mobile", "other")


def _type_of(value: object, allowed: tuple[str, ...]) -> str:
    """A provider's type label folded to ours; an unknown label is "other" (its original stays with the provider)."""
    v = "" if value is None else str(value).strip().casefold()
    return v if v in allowed else "other"


class EmailAddress(BaseModel):
    """An email with its type and display name; sorts by address so sets keep their old order."""

    model_config = ConfigDict(frozen=True)

    address: str
    type: str = ""
    name: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        if isinstance(value, str):
            return {"address": value}
        return value

    @field_validator("address", "name", mode="before")
    @classmethod
    def _strip(cls, value: object) -> str:
        return "" if value is None else str(value).strip()

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: object) -> str:
        return _type_of(value, EMAIL_TYPES)

    @model_serializer(mode="wrap")
    def _serialise(self, handler):  # type: ignore[no-untyped-def]
        # untyped and unnamed: the bare address, exactly as before types existed
        return self.address if not (self.type or self.name) else handler(self)

    def _order(self) -> tuple[str, str, str]:
        return (self.address, self.type, self.name)

    # An untyped, unnamed entry is its address: it equals (and hashes as) the bare string.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return not (self.type or self.name) and self.address == other
        return isinstance(other, EmailAddress) and self._order() == other._order()

    def __hash__(self) -> int:
        return hash(self.address) if not (self.type or self.name) else hash(self._order())

    def __lt__(self, other: "EmailAddress") -> bool:
        return self._order() < other._order()

    def __str__(self) -> str:
        return self.address


class PhoneNumber(BaseModel):
    """A phone number as typed, with its type; sorts by number so sets keep their old order."""

    model_config = ConfigDict(frozen=True)

    number: str
    type: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        if isinstance(value, str):
            return {"number": value}
        return value

    @field_validator("number", mode="before")
    @classmethod
    def _strip(cls, value: object) -> str:
        return "" if value is None else str(value).strip()

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: object) -> str:
        return _type_of(value, PHONE_TYPES)

    @model_serializer(mode="wrap")
    def _serialise(self, handler):  # type: ignore[no-untyped-def]
        return self.number if not self.type else handler(self)

    def _order(self) -> tuple[str, str]:
        return (self.number, self.type)

    # An untyped entry is its number: it equals (and hashes as) the bare string.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return not self.type and self.number == other
        return isinstance(other, PhoneNumber) and self._order() == other._order()

    def __hash__(self) -> int:
        return hash(self.number) if not self.type else hash(self._order())

    def __lt__(self, other: "PhoneNumber") -> bool:
        return self._order() < other._order()

    def __str__(self) -> str:
        return self.number


def _digits(number: str) -> str:
    return "".join(filter(str.isdigit, number)) or number


def _richness(item: BaseModel) -> int:
    return sum(1 for f in ("type", "name") if getattr(item, f, ""))


def _unique_typed(value: object, model: type, *, text, key) -> tuple:
    """Sorted, one entry per key; of two entries for one key the typed or named one wins."""
    if value is None:
        return ()
    if isinstance(value, (str, BaseModel, dict)):
        value = (value,)
    items = [v if isinstance(v, model) else model.model_validate(v) for v in value]
    chosen: dict[str, object] = {}
    for item in sorted(items):
        if not text(item):
            continue
        k = key(text(item))
        held = chosen.get(k)
        if held is None or _richness(held) < _richness(item):
            chosen[k] = item
    return tuple(sorted(chosen.values()))


def _frozen(value: object) -> tuple | None:
    """A hashable image of a set field as JSON holds it (strings and flat dicts), or None.

    The key of `_memo`: None (nothing to remember) for anything else, such as a
    dict holding a list, which then validates the long way.
    """
    if isinstance(value, (str, dict)):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        return None
    out = []
    for v in value:
        if type(v) is str:
            out.append(v)
        elif type(v) is dict and all(type(x) in (str, type(None)) for x in v.values()):
            out.append(tuple(v.items()))
        else:
            return None
    return tuple(out)


def _memo(build):
    """Remember what a set field's stored form validates to.

    A contact is read back from JSON several times on its way through one cycle
    (staged item, link snapshot, decision, write); its emails, phones and addresses
    validating as nested models with their own validators were most of the
    plan's CPU time. The results are frozen, so one instance serves every reader.
    """
    cached = lru_cache(maxsize=1 << 16)(lambda frozen: build(list(v if type(v) is str else dict(v) for v in frozen)))

    def validate(value: object) -> tuple:
        frozen = _frozen(value)
        return build(value) if frozen is None else cached(frozen)

    return validate


_email_set = _memo(lambda v: _unique_typed(v, EmailAddress, text=lambda e: e.address, key=str.casefold))
_phone_set = _memo(lambda v: _unique_typed(v, PhoneNumber, text=lambda p: p.number, key=_digits))


class PostalAddress(BaseModel):
    """A postal address as its parts; `type` is home, work or other.

    Orderable (by its fields) so a contact's addresses are a sorted set like its emails.
    """

    model_config = ConfigDict(frozen=True)

    type: str = "other"
    street: str = ""
    city: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: object) -> str:
        return "" if value is None else str(value).strip()

    def _order(self) -> tuple[str, ...]:
        return (self.type, self.street, self.city, self.region, self.postal_code, self.country)

    def __lt__(self, other: "PostalAddress") -> bool:
        return self._order() < other._order()

    def is_empty(self) -> bool:
        return not any((self.street, self.city, self.region, self.postal_code, self.country))


def _sorted_addresses(value: object) -> tuple:
    if value is None:
        return ()
    items = [a if isinstance(a, PostalAddress) else PostalAddress.model_validate(a) for a in value]
    return tuple(sorted({a for a in items if not a.is_empty()}))


_address_set = _memo(_sorted_addresses)


class Contact(BaseModel):
    """A person as both ends should agree on it.

    Values are stored as given (after connector translation); normalisation for
    matching lives in `sync.normalize` so that we never rewrite what a user typed
    just because we compare it case-insensitively.
    """

    model_config = ConfigDict(frozen=True)

    given_name: str = ""
    family_name: str = ""
    emails: tuple[EmailAddress, ...] = ()
    phones: tuple[PhoneNumber, ...] = ()
    company: str = ""
    job_title: str = ""
    notes: str = ""
    prefix: str = ""
    middle_name: str = ""
    suffix: str = ""
    nickname: str = ""
    department: str = ""
    #: ISO date "YYYY-MM-DD", or "--MM-DD" when the year is unknown (vCard's form)
    birthday: str = ""
    addresses: tuple[PostalAddress, ...] = ()
    websites: tuple[str, ...] = ()
    #: custom fields as "name=value", one per name
    custom: tuple[str, ...] = ()

    @field_validator("emails", mode="before")
    @classmethod
    def _emails(cls, value: object) -> tuple:
        # An address differing only in case is the same address: providers fold them.
        return _email_set(value)

    @field_validator("phones", mode="before")
    @classmethod
    def _phones(cls, value: object) -> tuple:
        # The same digits in another layout are the same number.
        return _phone_set(value)

    @field_validator("addresses", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> tuple:
        return _address_set(value)

    @field_validator("websites", mode="before")
    @classmethod
    def _websites(cls, value: object) -> tuple[str, ...]:
        return _unique(value, key=lambda v: v.casefold().rstrip("/"))

    @field_validator("custom", mode="before")
    @classmethod
    def _custom(cls, value: object) -> tuple[str, ...]:
        # one value per custom field name
        return _unique(value, key=lambda v: v.partition("=")[0].strip().casefold())

    @field_validator(*SCALAR_FIELDS, mode="before")
    @classmethod
    def _strip(cls, value: object) -> str:
        return "" if value is None else str(value).strip()

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> "Contact":
        """A copy whose updated fields are validated like any other (a bare string becomes a typed email)."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self).model_validate({**dict(self), **update})

    def email_addresses(self) -> tuple[str, ...]:
        """The addresses alone (what matching and mail association compare)."""
        return tuple(str(e) for e in self.emails)

    def phone_numbers(self) -> tuple[str, ...]:
        """The numbers alone, as typed."""
        return tuple(str(p) for p in self.phones)

    def custom_fields(self) -> dict[str, str]:
        """Custom fields by name."""
        return {k.strip(): v.strip() for k, _, v in (c.partition("=") for c in self.custom)}

    def display_name(self) -> str:
        return " ".join(p for p in (self.given_name, self.family_name) if p)

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in FIELDS)

    def canonical_hash(self) -> str:
        """Stable digest of the content; used to recognise our own writes echoing back."""
        return content_hash(self)


#: a contact as one side reports it
ContactRecord = SideRecord[Contact]
