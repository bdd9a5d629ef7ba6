"""Google contacts (People API) as a `MailboxContacts`, through google-api-python-client.

Why the shapes below:

- Retries belong to Temporal, so every request runs with `num_retries=0` and every
  failure leaves as one class of `models.errors`. Two transport-level repeats
  remain, deliberately: httplib2 re-sends once when a kept-alive connection turns
  out stale, and google-auth refreshes the access token once on a 401 (only when the
  credentials can refresh; static-token credentials surface the 401 as AuthExpired).
- `update_many` reads the current persons first (one `people:batchGet` per 200)
  and merges our fields into them. updateContact replaces listed fields wholesale,
  so writing a bare `{"givenName", "familyName"}` would wipe a middle name, email
  types, a second organization or other apps' clientData. The read also lets us
  refuse a stale etag locally without spending a write.
- Batch methods answer either as a whole (one bad item fails the call; Google's
  behaviour here is UNCONFIRMED) or per item (`PersonResponse.status`). Both are
  handled: a whole-call failure that belongs to an item (400/404) is re-run item by
  item, so one bad contact never blocks its 199 neighbours; per-item statuses are
  translated here because the client library never raises for them (a 429 or 500
  inside `status` arrives as a normal 200 body).
- A request-level failure (429, 5xx, 401) stops the run: the chunk that hit it and
  every later request get that error, unsent, so the caller can record what did
  succeed and let Temporal retry the rest after `retry_after`. A request missing
  what its operation needs (no contact, no resource name) is a Fatal for that item
  alone.
- A person we cannot translate (a wrong type, an unexpected shape) becomes a
  record without a contact and with value-free `problems` (`connectors.translation`),
  so it is quarantined instead of failing its page.
- Markers of our creates live in `clientData`, which connections.list cannot filter
  on: `find_by_markers` scans one listing for all the markers it is given.

Not thread-safe: one instance per activity invocation (httplib2.Http is not).
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

from google.oauth2.credentials import Credentials
from googleapiclient.errors import HttpError

from models.errors import (
    AuthExpired,
    ConnectorError,
    CursorExpired,
    Fatal,
    NotFound,
    PreconditionFailed,
    RateLimited,
    ReauthRequired,
    Transient,
    ValidationRejected,
)
from connectors.google_api import GoogleConnector, api_root, build_service, transport
from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from connectors.translation import untranslatable
from models.contact import Contact, ContactRecord, EmailAddress, PhoneNumber, PostalAddress
from models.record import SideRecord

#: People's largest connections.list page
MAX_PAGE_SIZE = 1000
PERSON_FIELDS = ("names,nicknames,emailAddresses,phoneNumbers,addresses,birthdays,organizations,biographies,urls,"
                 "userDefined,clientData,metadata")
WRITE_FIELDS = ("names,nicknames,emailAddresses,phoneNumbers,addresses,birthdays,organizations,biographies,urls,"
                "userDefined,clientData")
MARKER_KEY = "concordMarker"
CREATE_CHUNK = 200
UPDATE_CHUNK = 200
DELETE_CHUNK = 500

RATE_REASONS = {"ratelimitexceeded", "userratelimitexceeded", "rate_limit_exceeded", "quotaexceeded", "resource_exhausted"}
# Output-only keys of Person field values: never send them back.
_OUTPUT_ONLY_KEYS = {"metadata", "formattedType", "displayName", "displayNameLastFirst", "unstructuredName", "canonicalForm"}


# ---- error translation -------------------------------------------------------------


def _error_body(err: HttpError) -> dict:
    try:
        data = json.loads(err.content.decode("utf-8"))
    except Exception:
        return {}
    if isinstance(data, list) and data:
        data = data[0]
    return data.get("error", {}) if isinstance(data, dict) and isinstance(data.get("error"), dict) else {}


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except Exception:
        return None


def _field_from_message(message: str) -> str | None:
    match = re.search(r"(?:person|contactPerson)\.(\w+)", message)
    return match.group(1) if match else None


def _precondition(status: str, message: str, reasons: set[str]) -> ConnectorError | None:
    """FAILED_PRECONDITION means two different recoveries: resync or re-merge."""
    if status != "FAILED_PRECONDITION":
        return None
    if "EXPIRED_SYNC_TOKEN" in reasons or "sync token is expired" in message.lower():
        return CursorExpired(message, detail={"status": status})
    if "etag" in message.lower():
        return PreconditionFailed(message, detail={"status": status})
    return None


def translate_http_error(err: HttpError) -> ConnectorError:
    """One HttpError -> exactly one recovery class."""
    status_code = int(getattr(err.resp, "status", 0) or 0)
    body = _error_body(err)
    message = str(body.get("message") or getattr(err, "reason", "") or f"HTTP {status_code}")
    status = str(body.get("status") or "")
    reasons = {str(e.get("reason")) for e in body.get("errors") or [] if isinstance(e, dict) and e.get("reason")}
    reasons |= {str(d.get("reason")) for d in body.get("details") or [] if isinstance(d, dict) and d.get("reason")}
    detail = {"http_status": status_code, "status": status, "reasons": sorted(reasons)}
    lowered = {r.lower() for r in reasons}
    if status_code == 400:
        special = _precondition(status, message, reasons)
        if special is not None:
            special.detail.update(detail)
            return special
        return ValidationRejected(message, field=_field_from_message(message), detail=detail)
    if status_code == 401:
        return AuthExpired(message, detail=detail)
    if status_code == 429 or (status_code == 403 and (lowered & RATE_REASONS or status == "RESOURCE_EXHAUSTED")):
        return RateLimited(message, retry_after=_retry_after(err.resp), detail=detail)
    if status_code == 403:
        if "access_token_scope_insufficient" in lowered or "insufficientpermissions" in lowered:
            return ReauthRequired(message, detail=detail)
        return Fatal(message, detail=detail)
    if status_code == 404:
        return NotFound(message, detail=detail)
    if status_code in (408, 409) or status_code >= 500:
        return Transient(message, detail=detail)
    return Fatal(message, detail=detail)


# google.rpc.Code values carried in PersonResponse.status.
_RPC_NAMES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
              4: "DEADLINE_EXCEEDED", 10: "ABORTED", 13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}


def translate_item_status(status: dict) -> ConnectorError | None:
    """A batch item's `status` -> error, or None when the item succeeded."""
    code = int(status.get("code") or 0) if isinstance(status, dict) else 0
    if code == 0:
        return None
    message = str(status.get("message") or _RPC_NAMES.get(code, f"rpc code {code}"))
    name = _RPC_NAMES.get(code, str(code))
    detail = {"rpc_code": code, "status": name}
    special = _precondition(name, message, set())
    if special is not None:
        special.detail.update(detail)
        return special
    if code == 3 or code == 9:
        return ValidationRejected(message, field=_field_from_message(message), detail=detail)
    if code == 5:
        return NotFound(message, detail=detail)
    if code == 8:
        return RateLimited(message, detail=detail)
    if code in (4, 10, 13, 14):
        return Transient(message, detail=detail)
    if code == 16:
        return AuthExpired(message, detail=detail)
    return Fatal(message, detail=detail)


def _is_item_specific(err: ConnectorError) -> bool:
    """Errors that belong to one contact, not to the request as a whole."""
    return isinstance(err, (ValidationRejected, PreconditionFailed, NotFound))


# ---- Person <-> Contact ------------------------------------------------------------------


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z?$", value)
    if not match:
        return None
    base = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    frac = match.group(2) or ""
    return base + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _primary(values: list[dict]) -> dict | None:
    for v in values:
        if (v.get("metadata") or {}).get("primary"):
            return v
    return values[0] if values else None


def person_to_record(person: Any, custom_keys: Mapping[str, str] | None = None) -> SideRecord:
    """People `Person` -> SideRecord; never raises for bad data.

    `custom_keys` maps canonical custom field names to the `userDefined` keys this
    organisation uses (a name not in it is its own key).
    """
    try:
        return _person_to_record(person, custom_keys or {})
    except Exception as exc:  # one malformed person must not fail its page
        return untranslatable("mailbox", person.get("resourceName") if isinstance(person, dict) else None, exc)


def _person_to_record(person: dict, custom_keys: Mapping[str, str]) -> SideRecord:
    meta = person.get("metadata") or {}
    name = person["resourceName"]
    previous = tuple(meta.get("previousResourceNames") or ())
    if meta.get("deleted"):
        return ContactRecord(side="mailbox", external_id=name, deleted=True, etag=person.get("etag"), previous_ids=previous)
    problems: list[str] = []
    names = person.get("names") or []
    if len(names) > 1:
        problems.append(f"names holds {len(names)} values (a singleton field); the first was used")
    bios = person.get("biographies") or []
    if len(bios) > 1:
        problems.append(f"biographies holds {len(bios)} values (a singleton field); the first was used")
    first = names[0] if names else {}
    org = _primary(person.get("organizations") or []) or {}
    nick = _primary(person.get("nicknames") or []) or {}
    birthdays = person.get("birthdays") or []
    contact = Contact(
        given_name=first.get("givenName"),
        family_name=first.get("familyName"),
        middle_name=first.get("middleName"),
        prefix=first.get("honorificPrefix"),
        suffix=first.get("honorificSuffix"),
        nickname=nick.get("value"),
        emails=[EmailAddress(address=e["value"], type=_email_type(e.get("type")), name=e.get("displayName"))
                for e in person.get("emailAddresses") or [] if e.get("value")],
        phones=[PhoneNumber(number=p["value"], type=_phone_type(p.get("type")))
                for p in person.get("phoneNumbers") or [] if p.get("value")],
        addresses=[_address_from(a) for a in person.get("addresses") or [] if isinstance(a, dict)],
        birthday=_birthday_from(birthdays[0]) if birthdays else "",
        company=org.get("name"),
        job_title=org.get("title"),
        department=org.get("department"),
        notes=(bios[0].get("value") if bios else None),
        websites=[u["value"] for u in person.get("urls") or [] if u.get("value")],
        custom=[f"{_custom_name(u['key'], custom_keys)}={u.get('value') or ''}"
                for u in person.get("userDefined") or [] if u.get("key")],
    )
    sources = meta.get("sources") or []
    source = next((s for s in sources if s.get("type") == "CONTACT"), sources[0] if sources else {})
    return ContactRecord(
        side="mailbox",
        external_id=name,
        content=contact,
        etag=person.get("etag"),
        updated_at=_parse_time(source.get("updateTime")),
        previous_ids=previous,
        problems=tuple(problems),
    )


def person_marker(person: Any) -> str | None:
    for item in (person.get("clientData") if isinstance(person, dict) else None) or []:
        if isinstance(item, dict) and item.get("key") == MARKER_KEY:
            return item.get("value")
    return None


def _clean(value: dict, *, keep_display_name: bool = False) -> dict:
    drop = _OUTPUT_ONLY_KEYS - ({"displayName"} if keep_display_name else set())
    return {k: v for k, v in value.items() if k not in drop}


# People's types folded to ours; its other labels (workMobile, pager, a custom label) are
# kept on the entry as long as they fold to the type the canonical contact carries.
_PHONE_TYPES = {"mobile": "mobile", "workmobile": "mobile", "home": "home", "work": "work", "main": "work",
                "other": "other"}


def _email_type(value: Any) -> str:
    v = str(value or "").strip().casefold()
    return v if v in ("", "home", "work", "other") else "other"


def _phone_type(value: Any) -> str:
    v = str(value or "").strip().casefold()
    return "" if not v else _PHONE_TYPES.get(v, "other")


_ADDRESS_PARTS = (("street", "streetAddress"), ("city", "city"), ("region", "region"),
                  ("postal_code", "postalCode"), ("country", "country"))


def _address_from(a: dict) -> PostalAddress:
    kind = str(a.get("type") or "").casefold()
    return PostalAddress(type=kind if kind in ("home", "work") else "other",
                         **{ours: a.get(theirs) for ours, theirs in _ADDRESS_PARTS})


def _birthday_from(b: dict) -> str:
    d = b.get("date") or {}
    month, day = d.get("month"), d.get("day")
    if not (isinstance(month, int) and isinstance(day, int) and month and day):
        return ""
    year = d.get("year")
    return f"{year:04d}-{month:02d}-{day:02d}" if isinstance(year, int) and year else f"--{month:02d}-{day:02d}"


def _birthday_to(value: str) -> dict | None:
    m = re.fullmatch(r"(?:(\d{4})|-)-(\d\d)-(\d\d)", value)
    if not m:
        return None
    date = {"month": int(m.group(2)), "day": int(m.group(3))}
    if m.group(1):
        date["year"] = int(m.group(1))
    return {"date": date}


def _custom_name(key: str, custom_keys: Mapping[str, str]) -> str:
    for name, theirs in custom_keys.items():
        if theirs == key:
            return name
    return key


def _typed_entries(existing: list[dict], wanted: Iterable[Any], *, fold: Callable[[str], str],
                   value: Callable[[Any], str], typ: Callable[[Any], str], fold_type: Callable[[Any], str],
                   extra: Callable[[Any, dict], None] = lambda item, out: None) -> list[dict]:
    """Existing entries (with People's own type labels) for values still wanted, then new ones.

    An entry keeps its People type when it folds to the canonical type (or the canonical
    entry has none); otherwise it takes the canonical type.
    """
    by_key = {}
    for item in existing:
        by_key.setdefault(fold(str(item.get("value") or "")), item)
    out = []
    for w in wanted:
        old = by_key.get(fold(value(w)))
        entry = _clean(old, keep_display_name=True) if old is not None else {}
        entry["value"] = value(w)
        if typ(w) and fold_type(entry.get("type")) != typ(w):
            entry["type"] = typ(w)
        extra(w, entry)
        out.append(entry)
    return out


def _email_extra(e: EmailAddress, entry: dict) -> None:
    if e.name:
        entry["displayName"] = e.name
    else:
        entry.pop("displayName", None)


def _address_entries(existing: list[dict], wanted: Iterable[PostalAddress]) -> list[dict]:
    """Addresses: an existing one with the same parts keeps what else it holds (a PO box, its label)."""
    pool = [_clean(a) for a in existing]
    out = []
    for a in wanted:
        parts = {theirs: getattr(a, ours) for ours, theirs in _ADDRESS_PARTS}
        match = next((x for x in pool if _address_from(x) == a), None)
        if match is not None:
            pool.remove(match)
            out.append(match)
            continue
        entry = {k: v for k, v in parts.items() if v}
        entry["type"] = a.type
        out.append(entry)
    return out


def _custom_entries(existing: list[dict], contact: Contact, custom_keys: Mapping[str, str],
                    keep: set[str]) -> list[dict]:
    mine = contact.custom_fields()
    out = []
    theirs_of = {name: custom_keys.get(name, name) for name in mine}
    kept_keys = {custom_keys.get(k[len("custom:"):], k[len("custom:"):]) for k in keep if k.startswith("custom:")}
    for u in existing:
        key = u.get("key")
        if key in kept_keys:
            out.append(_clean(u))
    for name, value in sorted(mine.items()):
        key = theirs_of[name]
        if key not in kept_keys:
            out.append({"key": key, "value": value})
    return out


def _merge_multi(existing: list[dict], wanted: Iterable[str], *, fold: Callable[[str], str]) -> list[dict]:
    """Keep existing entries (with their types and labels) whose value is still wanted."""
    wanted_list = list(wanted)
    wanted_keys = {fold(v) for v in wanted_list}
    out, seen = [], set()
    for item in existing:
        key = fold(str(item.get("value") or ""))
        if key in wanted_keys and key not in seen:
            out.append(_clean(item))
            seen.add(key)
    for v in wanted_list:
        if fold(v) not in seen:
            out.append({"value": v})
            seen.add(fold(v))
    return out


_NAME_KEYS = (("given_name", "givenName"), ("family_name", "familyName"), ("middle_name", "middleName"),
              ("prefix", "honorificPrefix"), ("suffix", "honorificSuffix"))
_ORG_KEYS = (("company", "name"), ("job_title", "title"), ("department", "department"))
#: canonical list fields -> the Person field holding them
_LIST_FIELDS = {"emails": "emailAddresses", "phones": "phoneNumbers", "addresses": "addresses", "websites": "urls",
                "notes": "biographies", "birthday": "birthdays", "nickname": "nicknames"}


def _set_primary(values: list[dict], update: Callable[[dict], dict | None]) -> list[dict]:
    """Change the primary (or first) entry of a list; `update` returning None removes it."""
    values = list(values)
    index = next((i for i, v in enumerate(values) if (v.get("metadata") or {}).get("primary")), 0 if values else None)
    current = _clean(values[index]) if index is not None else {}
    changed = update(current)
    cleaned = [_clean(v) for v in values]
    if index is None:
        return [changed] if changed else []
    if changed:
        cleaned[index] = changed
    else:
        cleaned.pop(index)
    return cleaned


def contact_to_person(contact: Contact, *, existing: dict | None = None, marker: str | None = None,
                      keep: Iterable[str] = (), custom_keys: Mapping[str, str] | None = None) -> dict:
    """Our fields written into `existing` (or a new person), leaving everything else as it was.

    Fields in `keep` (canonical names, `custom:<name>` for one custom field) stay as the
    person holds them; so does everything People holds that we do not map (a second
    organization, other apps' clientData, an address's PO box).
    """
    existing = existing or {}
    keep = set(keep)
    custom_keys = custom_keys or {}
    person: dict[str, Any] = {}
    names = [_clean(n) for n in existing.get("names") or []][:1]
    name = names[0] if names else {}
    for ours, theirs in _NAME_KEYS:
        value = getattr(contact, ours)
        if ours in keep:
            continue
        if value:
            name[theirs] = value
        else:
            name.pop(theirs, None)
    person["names"] = [name] if any(v for k, v in name.items() if k != "metadata") else []

    for ours, theirs in _LIST_FIELDS.items():
        if ours in keep:
            person[theirs] = [_clean(v, keep_display_name=ours == "emails") for v in existing.get(theirs) or []]
    if "emails" not in keep:
        person["emailAddresses"] = _typed_entries(
            existing.get("emailAddresses") or [], contact.emails, fold=lambda v: v.strip().casefold(),
            value=lambda e: e.address, typ=lambda e: e.type, fold_type=_email_type, extra=_email_extra)
    if "phones" not in keep:
        digits = lambda v: "".join(ch for ch in v if ch.isdigit()) or v.strip()  # noqa: E731
        person["phoneNumbers"] = _typed_entries(
            existing.get("phoneNumbers") or [], contact.phones, fold=digits,
            value=lambda p: p.number, typ=lambda p: p.type, fold_type=_phone_type)
    if "addresses" not in keep:
        person["addresses"] = _address_entries(existing.get("addresses") or [], contact.addresses)
    if "websites" not in keep:
        person["urls"] = _typed_entries(existing.get("urls") or [], contact.websites,
                                        fold=lambda v: v.strip().casefold().rstrip("/"),
                                        value=lambda w: w, typ=lambda w: "", fold_type=lambda t: "")
    if "notes" not in keep:
        person["biographies"] = [{"value": contact.notes, "contentType": "TEXT_PLAIN"}] if contact.notes else []
    if "birthday" not in keep:
        olds = existing.get("birthdays") or []
        if olds and _birthday_from(olds[0]) == contact.birthday:
            person["birthdays"] = [_clean(olds[0])]
        else:
            wanted = _birthday_to(contact.birthday)
            person["birthdays"] = [wanted] if wanted else []
    if "nickname" not in keep:
        def nick(current: dict) -> dict | None:
            return {**current, "value": contact.nickname} if contact.nickname else None
        person["nicknames"] = _set_primary(existing.get("nicknames") or [], nick)

    wanted_org = {theirs: getattr(contact, ours) for ours, theirs in _ORG_KEYS if ours not in keep}

    def org(current: dict) -> dict | None:
        for key, value in wanted_org.items():
            if value:
                current[key] = value
            else:
                current.pop(key, None)
        return current if any(k not in ("type", "current", "metadata") for k in current) else None
    person["organizations"] = _set_primary(existing.get("organizations") or [], org)

    if "custom" in keep:
        person["userDefined"] = [_clean(u) for u in existing.get("userDefined") or []]
    else:
        person["userDefined"] = _custom_entries(existing.get("userDefined") or [], contact, custom_keys, keep)
    client_data = [_clean(c) for c in existing.get("clientData") or []]
    if marker is not None:
        client_data = [c for c in client_data if c.get("key") != MARKER_KEY] + [{"key": MARKER_KEY, "value": marker}]
    person["clientData"] = client_data
    return person


def _split(items: Sequence[WriteRequest], size: int) -> list[list[WriteRequest]]:
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---- transport ----------------------------------------------------------------------------


class GooglePeopleContacts(GoogleConnector):
    """A Google mailbox's contacts. See the module docstring for the write strategy."""

    provider = "google"

    def __init__(self, base_url: str, credentials: Credentials, *, page_size: int = 1000, timeout: float = 30.0, batch_updates: bool = True,
                 custom_keys: Mapping[str, str] | None = None) -> None:
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        self.base_url = api_root(base_url)
        self.page_size = page_size
        self.batch_updates = batch_updates
        #: canonical custom field name -> this organisation's `userDefined` key (see sync.fields.FieldMap)
        self.custom_keys = dict(custom_keys or {})
        self._service, _, self._http = build_service("people", "v1", self.base_url, credentials, timeout=timeout)

    # ---- plumbing ----------------------------------------------------------------------

    def _record(self, person: Any) -> SideRecord:
        return person_to_record(person, self.custom_keys)

    def _execute(self, request: Any) -> dict:
        try:
            return transport(lambda: request.execute(num_retries=0)) or {}
        except HttpError as err:
            raise translate_http_error(err) from err

    @functools.cached_property
    def _people(self) -> Any:
        # Built once: googleapiclient builds a resource's methods (docstrings included)
        # every time it is asked for one, which was a sixth of a 10,000-contact listing.
        return self._service.people()

    @functools.cached_property
    def _connections(self) -> Any:
        return self._people.connections()

    # ---- reads ---------------------------------------------------------------------------

    def _list_page(self, sync_token: str | None, google_page: str | None, *, request_sync: bool = True,
                   page_size: int | None = None) -> dict:
        params: dict[str, Any] = {
            "resourceName": "people/me",
            "personFields": PERSON_FIELDS,
            "pageSize": page_size or self.page_size,
            "requestSyncToken": request_sync,
        }
        if sync_token:
            params["syncToken"] = sync_token
        if google_page:
            params["pageToken"] = google_page
        return self._execute(self._connections.list(**params))

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        """One page; the sync token of the round travels inside our page token.

        Google pins every parameter across the pages of one round; carrying the
        round's sync token in `next_page` keeps that true even if the caller passes
        a different cursor alongside a page token.
        """
        sync_token, google_page = cursor, None
        if page_token:
            try:
                state = json.loads(page_token)
                sync_token, google_page = state.get("s"), state["p"]
            except (ValueError, KeyError, TypeError, AttributeError):
                raise Fatal("page token was not produced by this connector") from None
        body = self._list_page(sync_token, google_page)
        records = [self._record(p) for p in body.get("connections") or []]
        next_google = body.get("nextPageToken")
        if next_google:
            return DeltaPage(records=records, next_page=json.dumps({"s": sync_token, "p": next_google}))
        return DeltaPage(records=records, cursor=body.get("nextSyncToken"))

    def get(self, external_id: str) -> SideRecord:
        person = self._execute(self._people.get(resourceName=external_id, personFields=PERSON_FIELDS))
        return self._record(person)

    def find_by_marker(self, marker: str) -> SideRecord | None:
        return self.find_by_markers([marker]).get(marker)

    def find_by_markers(self, markers: Sequence[str], heartbeat: Callable[[], None] = lambda: None) -> dict[str, SideRecord]:
        """Scan one full listing for all the clientData markers wanted.

        Cost: at most ceil(contacts / 1,000) list calls however many markers are
        sought (a scan asks for the largest pages, whatever the delta's page size);
        it stops once all are found.
        `heartbeat` runs after each page. Google shows writes in listings with a lag,
        so a marker missing right after a crash can mean "not visible yet": callers
        should only conclude "never created" once that lag has passed.
        """
        wanted = set(markers)
        found: dict[str, SideRecord] = {}
        google_page = None
        while len(found) < len(wanted):
            body = self._list_page(None, google_page, request_sync=False, page_size=MAX_PAGE_SIZE)
            for person in body.get("connections") or []:
                marker = person_marker(person)
                if marker in wanted:
                    found[marker] = self._record(person)  # type: ignore[index]
            heartbeat()
            google_page = body.get("nextPageToken")
            if not google_page:
                break
        return found

    def _batch_get(self, names: list[str]) -> dict[str, dict | ConnectorError]:
        body = self._execute(self._people.getBatchGet(resourceNames=names, personFields=PERSON_FIELDS))
        out: dict[str, dict | ConnectorError] = {}
        for item in body.get("responses") or []:
            name = item.get("requestedResourceName")
            err = translate_item_status(item.get("status") or {})
            if err is None and not item.get("person"):
                err = NotFound("person missing from batchGet response")
            out[name] = err if err is not None else item["person"]
        for name in names:
            out.setdefault(name, NotFound("person missing from batchGet response"))
        return out

    # ---- writes ---------------------------------------------------------------------------

    def _run_chunks(
        self,
        chunks: list[list[WriteRequest]],
        handle: Callable[[list[WriteRequest]], list[WriteResult]],
    ) -> list[WriteResult]:
        """Attribute calls to items, and stop at the first request-level error."""
        results: list[WriteResult] = []
        for index, chunk in enumerate(chunks):
            before = self.calls_made
            try:
                chunk_results = handle(chunk)
            except ConnectorError as err:
                # Not this chunk's items' fault: everything from here on waits for a retry.
                share = (self.calls_made - before) / len(chunk)
                results.extend(WriteResult(key=r.key, error=err, calls=share) for r in chunk)
                results.extend(WriteResult(key=r.key, error=err, calls=0.0) for later in chunks[index + 1 :] for r in later)
                return results
            share = (self.calls_made - before) / len(chunk)
            for r in chunk_results:
                r.calls = share
            results.extend(chunk_results)
        return results

    @staticmethod
    def _malformed_apart(
        requests: Sequence[WriteRequest], op: str, run: Callable[[list[WriteRequest]], list[WriteResult]]
    ) -> list[WriteResult]:
        """Malformed requests fail alone; `run` gets the others and answers them in order."""
        bad = {id(r): WriteResult(key=r.key, error=err, calls=0.0) for r in requests if (err := r.malformed(op))}
        good = [r for r in requests if id(r) not in bad]
        done = iter(run(good) if good else [])
        return [bad[id(r)] if id(r) in bad else next(done) for r in requests]

    def create_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._malformed_apart(
            requests, "create", lambda good: self._run_chunks(_split(good, CREATE_CHUNK), self._create_chunk)
        )

    def _create_chunk(self, chunk: list[WriteRequest]) -> list[WriteResult]:
        body = {
            "contacts": [{"contactPerson": contact_to_person(r.content, marker=r.marker, custom_keys=self.custom_keys)} for r in chunk],  # type: ignore[arg-type]
            "readMask": PERSON_FIELDS,
        }
        try:
            reply = self._execute(self._people.batchCreateContacts(body=body))
        except ConnectorError as err:
            if _is_item_specific(err):
                return [self._create_one(r) for r in chunk]
            raise
        created = reply.get("createdPeople") or []
        if len(created) != len(chunk):
            raise Fatal(f"batchCreateContacts answered {len(created)} results for {len(chunk)} contacts")
        out = []
        for r, item in zip(chunk, created):
            err = translate_item_status(item.get("status") or {})
            out.append(WriteResult(key=r.key, error=err) if err else WriteResult(key=r.key, record=self._record(item["person"])))
        return out

    def _create_one(self, r: WriteRequest) -> WriteResult:
        try:
            person = self._execute(
                self._people.createContact(body=contact_to_person(r.content, marker=r.marker, custom_keys=self.custom_keys), personFields=PERSON_FIELDS)  # type: ignore[arg-type]
            )
        except ConnectorError as err:
            if _is_item_specific(err):
                return WriteResult(key=r.key, error=err)
            raise
        return WriteResult(key=r.key, record=self._record(person))

    def update_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        return self._malformed_apart(requests, "update", self._update_in_chunks)

    def _update_in_chunks(self, requests: list[WriteRequest]) -> list[WriteResult]:
        # A resource name twice in one batchUpdate map would collide: later duplicates
        # go to later chunks, in order.
        ordered: list[list[WriteRequest]] = []
        for r in requests:
            for chunk in ordered:
                if len(chunk) < UPDATE_CHUNK and all(x.external_id != r.external_id for x in chunk):
                    chunk.append(r)
                    break
            else:
                ordered.append([r])
        flat = [r for chunk in ordered for r in chunk]
        results = self._run_chunks(ordered, self._update_chunk)
        by_request = {id(r): res for r, res in zip(flat, results)}
        return [by_request[id(r)] for r in requests]

    def _update_chunk(self, chunk: list[WriteRequest]) -> list[WriteResult]:
        current = self._batch_get([r.external_id for r in chunk])  # type: ignore[misc]
        results: dict[int, WriteResult] = {}
        to_send: list[tuple[WriteRequest, dict]] = []
        for r in chunk:
            now = current[r.external_id]  # type: ignore[index]
            if isinstance(now, ConnectorError):
                results[id(r)] = WriteResult(key=r.key, error=now)
                continue
            source_etags = {s.get("etag") for s in (now.get("metadata") or {}).get("sources") or []}
            if r.etag and r.etag != now.get("etag") and r.etag not in source_etags:
                results[id(r)] = WriteResult(
                    key=r.key, error=PreconditionFailed("contact changed in the mailbox since it was read", detail={"local": True})
                )
                continue
            person = contact_to_person(r.content, existing=now, marker=r.marker, keep=r.keep,
                                       custom_keys=self.custom_keys)  # type: ignore[arg-type]
            person["etag"] = r.etag or now.get("etag")
            to_send.append((r, person))
        if to_send:
            if self.batch_updates and len(to_send) > 1:
                sent = self._update_batch(to_send)
            else:
                sent = [self._update_one(r, p) for r, p in to_send]
            for (r, _), res in zip(to_send, sent):
                results[id(r)] = res
        return [results[id(r)] for r in chunk]

    def _update_batch(self, items: list[tuple[WriteRequest, dict]]) -> list[WriteResult]:
        body = {
            "contacts": {r.external_id: p for r, p in items},
            "updateMask": WRITE_FIELDS,
            "readMask": PERSON_FIELDS,
        }
        try:
            reply = self._execute(self._people.batchUpdateContacts(body=body))
        except ConnectorError as err:
            if _is_item_specific(err):
                return [self._update_one(r, p) for r, p in items]
            raise
        answers = reply.get("updateResult") or {}
        out = []
        for r, _ in items:
            item = answers.get(r.external_id)
            if item is None:
                out.append(WriteResult(key=r.key, error=Transient("batchUpdateContacts returned no result for this contact")))
                continue
            err = translate_item_status(item.get("status") or {})
            out.append(WriteResult(key=r.key, error=err) if err else WriteResult(key=r.key, record=self._record(item["person"])))
        return out

    def _update_one(self, r: WriteRequest, person: dict) -> WriteResult:
        try:
            reply = self._execute(
                self._people.updateContact(
                    resourceName=r.external_id, updatePersonFields=WRITE_FIELDS, personFields=PERSON_FIELDS, body=person
                )
            )
        except ConnectorError as err:
            if _is_item_specific(err):
                return WriteResult(key=r.key, error=err)
            raise
        return WriteResult(key=r.key, record=self._record(reply))

    def delete_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Delete; gone already counts as deleted. People has no etag on delete."""
        return self._malformed_apart(
            requests, "delete", lambda good: self._run_chunks(_split(good, DELETE_CHUNK), self._delete_chunk)
        )

    def _deleted(self, r: WriteRequest) -> WriteResult:
        return WriteResult(key=r.key, record=ContactRecord(side="mailbox", external_id=r.external_id or "", deleted=True))

    def _delete_chunk(self, chunk: list[WriteRequest]) -> list[WriteResult]:
        names = list(dict.fromkeys(r.external_id for r in chunk))
        try:
            self._execute(self._people.batchDeleteContacts(body={"resourceNames": names}))
        except ConnectorError as err:
            if not _is_item_specific(err):
                raise
            return [self._delete_one(r) for r in chunk]
        return [self._deleted(r) for r in chunk]

    def _delete_one(self, r: WriteRequest) -> WriteResult:
        try:
            self._execute(self._people.deleteContact(resourceName=r.external_id))
        except NotFound:
            return self._deleted(r)
        except ConnectorError as err:
            if _is_item_specific(err):
                return WriteResult(key=r.key, error=err)
            raise
        return self._deleted(r)
