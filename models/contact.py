"""The canonical contact: the one shape both ends are translated into.

Connectors translate provider payloads (a People `Person`, a Graph `contact`, a CRM
row) into `Contact` and back. Merging, matching and hashing only ever see this
shape, so a new provider is a translation, not a change to the sync core.

Multi-valued fields (emails, phones) are sets: order carries no meaning on either
side and set semantics make three-way merges conflict-free for them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

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


class Contact(BaseModel):
    """A person as both ends should agree on it.

    Values are stored as given (after connector translation); normalisation for
    matching lives in `sync.normalize` so that we never rewrite what a user typed
    just because we compare it case-insensitively.
    """

    model_config = ConfigDict(frozen=True)

    given_name: str = ""
    family_name: str = ""
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
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
    def _emails(cls, value: object) -> tuple[str, ...]:
        # An address differing only in case is the same address: providers fold them.
        return _unique(value, key=str.casefold)

    @field_validator("phones", mode="before")
    @classmethod
    def _phones(cls, value: object) -> tuple[str, ...]:
        # The same digits in another layout are the same number.
        return _unique(value, key=lambda v: "".join(ch for ch in v if ch.isdigit()) or v)

    @field_validator("addresses", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> tuple:
        if value is None:
            return ()
        items = [a if isinstance(a, PostalAddress) else PostalAddress.model_validate(a) for a in value]
        return tuple(sorted({a for a in items if not a.is_empty()}))

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

    def email_addresses(self) -> tuple[str, ...]:
        """The addresses alone (what matching and mail association compare)."""
        return self.emails

    def phone_numbers(self) -> tuple[str, ...]:
        """The numbers alone, as typed."""
        return self.phones

    def display_name(self) -> str:
        return " ".join(p for p in (self.given_name, self.family_name) if p)

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in FIELDS)

    def canonical_hash(self) -> str:
        """Stable digest of the content; used to recognise our own writes echoing back."""
        return content_hash(self)


#: a contact as one side reports it
ContactRecord = SideRecord[Contact]
