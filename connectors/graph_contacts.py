"""Microsoft 365 contacts through Microsoft Graph v1.0, as a `MailboxContacts`.

Choices that are not obvious from the protocol:

- Every request (and every `$batch` sub-request) sends `Prefer: IdType="ImmutableId"`,
  so an id we store survives the user moving the contact between folders.
- Delta links are used exactly as Graph returns them (absolute URLs with opaque
  `$skiptoken` / `$deltatoken`): the stored cursor IS the `@odata.deltaLink` and a
  page token IS the `@odata.nextLink`. Rebuilding them drops state Graph encodes.
- Graph may replay an item inside a round. A page is de-duplicated here (see
  `_dedupe`: the later entry wins, a delete after an update wins, and a replayed
  older version never overrides a newer one or resurrects a deleted item).
  Duplicates across pages reach the caller in order, so staging "last one wins" by
  id stays correct; `read_round` de-duplicates a whole round when that is wanted.
- Phones: Graph has `businessPhones[]`, `mobilePhone` and `homePhones[]`, the
  canonical contact one set. Reading merges all three. Writing puts each phone back
  in the slot this instance last saw it in (mobile / home / business) and every
  phone it has never seen into `businessPhones`: a number the user filed as mobile
  stays mobile when we rewrite the contact, and a new number from the platform has
  no better home than "business" (it usually is a work number). The memory is per
  connector instance; a fresh worker writing a known-mobile number it never read
  files it under business (content and hash are unchanged, only the slot moves).
  Email display names are remembered the same way (new addresses get the address
  as their name, as Outlook does).
- Our marker is the single-value extended property `MARKER_PROPERTY_ID`, found
  again with the `$filter` Graph documents for extended properties.
- Writes go through JSON `$batch` in chunks of 20, several chunks in parallel, but
  never more than `max_concurrency` HTTP requests in flight (Graph allows four per
  mailbox; the fifth gets 429). A `$batch` is one call for `calls_made`.
- Errors, per item for writes: 410 / `syncStateNotFound` / `resyncRequired` ->
  CursorExpired; 429 (and 503 with Retry-After) -> RateLimited; other 5xx and
  timeouts -> Transient; 401 -> AuthExpired; 403 -> ReauthRequired (consent or
  mailbox access withdrawn); 409 (`ErrorIrresolvableConflict`) and 412 ->
  PreconditionFailed; 400 -> ValidationRejected; 404 -> NotFound. Writes never
  raise a ConnectorError: a failure of a whole `$batch` call (401, 429, timeout)
  becomes the error of each item in that chunk, and an already-missing contact
  counts as deleted.
"""

from __future__ import annotations

import email.utils
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote

import httpx

from connectors.errors import (
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
from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from models.contact import Contact, SideRecord

#: Same id the emulator documents; a string property in our own GUID namespace.
MARKER_PROPERTY_ID = "String {5b8f3c1e-7a2d-4e69-9c4b-2f1d6a8e0c37} Name concordMarker"
IMMUTABLE = 'IdType="ImmutableId"'
BATCH_MAX = 20
SELECT_FIELDS = (
    "givenName,surname,emailAddresses,businessPhones,mobilePhone,homePhones,"
    "companyName,jobTitle,personalNotes,changeKey,lastModifiedDateTime,parentFolderId"
)
_CURSOR_CODES = {"syncstatenotfound", "resyncrequired", "syncstateinvalid"}

_SEMAPHORES: dict[str, threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


def _shared_semaphore(key: str, size: int) -> threading.BoundedSemaphore:
    """One in-flight budget per mailbox, shared by every instance in this process."""
    with _SEMAPHORES_LOCK:
        sem = _SEMAPHORES.get(key)
        if sem is None:
            sem = _SEMAPHORES[key] = threading.BoundedSemaphore(size)
        return sem


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After") or (headers or {}).get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for(status: int, headers: Any, body: Any) -> ConnectorError:
    """Translate one Graph error answer (top-level or `$batch` sub-response)."""
    err = body.get("error") if isinstance(body, dict) else None
    code = str((err or {}).get("code") or "") if isinstance(err, dict) else ""
    message = str((err or {}).get("message") or "") if isinstance(err, dict) else ""
    detail = {"status": status, "code": code}
    text = f"graph {status} {code}".strip()
    if status == 410 or code.lower() in _CURSOR_CODES:
        return CursorExpired(text, detail=detail)
    if status == 429:
        return RateLimited(text, retry_after=_retry_after(headers), detail=detail)
    if status == 503 and _retry_after(headers) is not None:
        return RateLimited(text, retry_after=_retry_after(headers), detail=detail)
    if status >= 500:
        return Transient(text, detail=detail)
    if status == 401:
        return AuthExpired(text, detail=detail)
    if status == 403:
        return ReauthRequired(text, detail=detail)
    if status in (409, 412):
        return PreconditionFailed(text, detail=detail)
    if status == 400:
        # The message names the offending property; it never carries contact values.
        return ValidationRejected(f"{text}: {message}"[:300], rule=code or None, detail=detail)
    if status == 404:
        return NotFound(text, detail=detail)
    return Fatal(text, detail=detail)


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        v = str(value)
        if v.endswith("Z"):
            v = v[:-1] + "+00:00"
        return datetime.fromisoformat(v).timestamp()
    except ValueError:
        return None


def _etag_of(item: dict[str, Any]) -> str | None:
    if item.get("@odata.etag"):
        return str(item["@odata.etag"])
    if item.get("changeKey"):
        return f'W/"{item["changeKey"]}"'
    return None


def _dedupe(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collapse replays of the same id inside a page or round.

    The later entry wins, with two guards against replays of old states: an entry
    whose lastModifiedDateTime is older than the one kept does not override it,
    and after a delete, only a version not seen before in this round (a genuine
    restore) brings the item back.
    """
    kept: dict[str, dict[str, Any]] = {}
    seen_keys: dict[str, set[str]] = {}
    for item in items:
        if not isinstance(item, dict) or not item.get("id"):
            continue
        iid = str(item["id"])
        prev = kept.get(iid)
        removed = "@removed" in item
        if prev is not None and not removed:
            key = str(item.get("changeKey") or item.get("@odata.etag") or "")
            if "@removed" in prev and key and key in seen_keys.get(iid, set()):
                continue  # a replay of a version from before the delete
            if "@removed" not in prev:
                t_new, t_old = _parse_time(item.get("lastModifiedDateTime")), _parse_time(prev.get("lastModifiedDateTime"))
                if t_new is not None and t_old is not None and t_new < t_old:
                    continue  # an older version replayed after a newer one
        if not removed:
            key = str(item.get("changeKey") or item.get("@odata.etag") or "")
            if key:
                seen_keys.setdefault(iid, set()).add(key)
        kept.pop(iid, None)
        kept[iid] = item  # re-insert: order follows the winning entry
    return list(kept.values())


class GraphContacts:
    """Contacts of one Microsoft 365 mailbox (`provider = "microsoft"`)."""

    provider = "microsoft"

    def __init__(
        self,
        base_url: str,
        token_provider: Callable[[], str],
        *,
        client: httpx.Client | None = None,
        max_concurrency: int = 4,
        folder_id: str | None = None,
        page_size: int = 100,
        timeout: float = 30.0,
        mailbox_key: str | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        self.base = root if root.endswith("/v1.0") else root + "/v1.0"
        self._token_provider = token_provider
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=timeout, trust_env=False)
        self.max_concurrency = max(1, int(max_concurrency))
        self._sem = (
            _shared_semaphore(mailbox_key, self.max_concurrency)
            if mailbox_key
            else threading.BoundedSemaphore(self.max_concurrency)
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.folder_id = folder_id
        self.page_size = page_size
        self._calls = 0
        self._lock = threading.Lock()
        # Where each phone / what name each email had when last read, per contact id.
        self._phone_slots: dict[str, dict[str, str]] = {}
        self._email_names: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def calls_made(self) -> int:
        return self._calls

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._own_client:
            self._client.close()

    def __enter__(self) -> "GraphContacts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collection_path(self) -> str:
        if self.folder_id:
            return f"/me/contactFolders/{quote(self.folder_id, safe='')}/contacts"
        return "/me/contacts"

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP call under the mailbox's in-flight budget; errors become ConnectorErrors."""
        token = self._token_provider()
        hdrs = {"Authorization": f"Bearer {token}", "Prefer": IMMUTABLE, "Accept": "application/json"}
        hdrs.update(headers or {})
        if not url.startswith(("http://", "https://")):
            url = self.base + url
        with self._sem:
            with self._lock:
                self._calls += 1
            try:
                resp = self._client.request(method, url, params=params, json=json, headers=hdrs)
            except httpx.TimeoutException as exc:
                raise Transient(f"graph timeout ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise Transient(f"graph transport error ({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            raise error_for(resp.status_code, resp.headers, body)
        return resp

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="graph-batch")
            return self._pool

    # ------------------------------------------------------------------ mapping

    def _remember(self, item: dict[str, Any]) -> None:
        iid = str(item.get("id") or "")
        if not iid or "@removed" in item:
            return
        slots: dict[str, str] = {}
        for p in item.get("businessPhones") or []:
            if isinstance(p, str) and p.strip():
                slots[p.strip()] = "business"
        for p in item.get("homePhones") or []:
            if isinstance(p, str) and p.strip():
                slots[p.strip()] = "home"
        mobile = item.get("mobilePhone")
        if isinstance(mobile, str) and mobile.strip():
            slots[mobile.strip()] = "mobile"
        names = {}
        for e in item.get("emailAddresses") or []:
            if isinstance(e, dict) and e.get("address") and e.get("name"):
                names[str(e["address"]).strip().lower()] = str(e["name"])
        with self._lock:
            self._phone_slots[iid] = slots
            self._email_names[iid] = names

    def to_record(self, item: dict[str, Any]) -> SideRecord:
        """Graph contact (or `@removed` entry) -> SideRecord."""
        iid = str(item.get("id"))
        if "@removed" in item:
            return SideRecord(side="mailbox", external_id=iid, deleted=True)
        problems: list[str] = []
        emails = []
        for e in item.get("emailAddresses") or []:
            if isinstance(e, dict) and isinstance(e.get("address"), str) and e["address"].strip():
                emails.append(e["address"])
            else:
                problems.append("emailAddresses entry without an address")
        phones: list[str] = []
        for key in ("businessPhones", "homePhones"):
            for p in item.get(key) or []:
                if isinstance(p, str):
                    phones.append(p)
                else:
                    problems.append(f"{key} entry is not a string")
        if isinstance(item.get("mobilePhone"), str):
            phones.append(item["mobilePhone"])
        self._remember(item)
        contact = Contact(
            given_name=item.get("givenName") or "",
            family_name=item.get("surname") or "",
            emails=emails,
            phones=phones,
            company=item.get("companyName") or "",
            job_title=item.get("jobTitle") or "",
            notes=item.get("personalNotes") or "",
        )
        return SideRecord(
            side="mailbox",
            external_id=iid,
            contact=contact,
            etag=_etag_of(item),
            updated_at=_parse_time(item.get("lastModifiedDateTime")),
            problems=tuple(problems),
        )

    def to_graph(self, contact: Contact, external_id: str | None = None, marker: str | None = None) -> dict[str, Any]:
        """Canonical contact -> Graph body (all synced fields, so PATCH replaces them)."""
        with self._lock:
            slots = dict(self._phone_slots.get(external_id or "", {}))
            names = dict(self._email_names.get(external_id or "", {}))
        mobile = [p for p in contact.phones if slots.get(p) == "mobile"]
        home = [p for p in contact.phones if slots.get(p) == "home"]
        business = [p for p in contact.phones if slots.get(p) not in ("mobile", "home")]
        # Graph holds one mobile number; any extra known-mobile one goes to business.
        business += mobile[1:]
        body: dict[str, Any] = {
            "givenName": contact.given_name or None,
            "surname": contact.family_name or None,
            "emailAddresses": [{"address": e, "name": names.get(e.lower(), e)} for e in contact.emails],
            "businessPhones": business,
            "mobilePhone": mobile[0] if mobile else None,
            "homePhones": home,
            "companyName": contact.company or None,
            "jobTitle": contact.job_title or None,
            "personalNotes": contact.notes or None,
        }
        if marker:
            body["singleValueExtendedProperties"] = [{"id": MARKER_PROPERTY_ID, "value": marker}]
        return body

    # ------------------------------------------------------------------ reads

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        if page_token or cursor:
            resp = self._request("GET", page_token or cursor)  # the link exactly as Graph gave it
        else:
            resp = self._request(
                "GET",
                f"{self._collection_path()}/delta",
                params={"$select": SELECT_FIELDS},
                headers={"Prefer": f"{IMMUTABLE}, odata.maxpagesize={self.page_size}"},
            )
        body = resp.json()
        value = body.get("value")
        if not isinstance(value, list):
            raise Transient("graph delta page without a value array")
        next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
        if not next_link and not delta_link:
            raise Transient("graph delta page without nextLink or deltaLink")
        records = [self.to_record(item) for item in _dedupe(value)]
        return DeltaPage(records=records, next_page=next_link, cursor=None if next_link else delta_link)

    def read_round(self, cursor: str | None) -> tuple[list[SideRecord], str]:
        """Every page of one round, de-duplicated across pages; returns (records, new cursor)."""
        raw: list[dict[str, Any]] = []
        link = cursor
        first = True
        while True:
            if first and not cursor:
                resp = self._request(
                    "GET",
                    f"{self._collection_path()}/delta",
                    params={"$select": SELECT_FIELDS},
                    headers={"Prefer": f"{IMMUTABLE}, odata.maxpagesize={self.page_size}"},
                )
            else:
                resp = self._request("GET", link)  # type: ignore[arg-type]
            first = False
            body = resp.json()
            raw.extend(body.get("value") or [])
            if body.get("@odata.nextLink"):
                link = body["@odata.nextLink"]
                continue
            if not body.get("@odata.deltaLink"):
                raise Transient("graph delta page without nextLink or deltaLink")
            return [self.to_record(i) for i in _dedupe(raw)], body["@odata.deltaLink"]

    def get(self, external_id: str) -> SideRecord:
        resp = self._request("GET", f"/me/contacts/{quote(external_id, safe='')}", params={"$select": SELECT_FIELDS})
        return self.to_record(resp.json())

    def find_by_marker(self, marker: str) -> SideRecord | None:
        value = marker.replace("'", "''")
        flt = (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARKER_PROPERTY_ID}' "
            f"and ep/value eq '{value}')"
        )
        resp = self._request("GET", self._collection_path(), params={"$filter": flt, "$top": "1"})
        items = resp.json().get("value") or []
        return self.to_record(items[0]) if items else None

    # ------------------------------------------------------------------ writes

    def create_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        def build(r: WriteRequest) -> dict[str, Any]:
            if r.contact is None:
                raise ValidationRejected("create without a contact", field="contact")
            return {"method": "POST", "url": self._collection_path(), "body": self.to_graph(r.contact, None, r.marker)}

        return self._batch_write(requests, build)

    def update_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        def build(r: WriteRequest) -> dict[str, Any]:
            if r.contact is None or not r.external_id:
                raise ValidationRejected("update needs a contact and an external id", field="external_id")
            sub: dict[str, Any] = {
                "method": "PATCH",
                "url": f"/me/contacts/{quote(r.external_id, safe='')}",
                "body": self.to_graph(r.contact, r.external_id, r.marker),
            }
            if r.etag:
                sub["headers"] = {"If-Match": r.etag}
            return sub

        return self._batch_write(requests, build)

    def delete_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        def build(r: WriteRequest) -> dict[str, Any]:
            if not r.external_id:
                raise ValidationRejected("delete needs an external id", field="external_id")
            sub: dict[str, Any] = {"method": "DELETE", "url": f"/me/contacts/{quote(r.external_id, safe='')}"}
            if r.etag:
                sub["headers"] = {"If-Match": r.etag}
            return sub

        return self._batch_write(requests, build, deleting=True)

    def _batch_write(
        self,
        requests: Sequence[WriteRequest],
        build: Callable[[WriteRequest], dict[str, Any]],
        *,
        deleting: bool = False,
    ) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(requests)
        todo: list[tuple[int, dict[str, Any]]] = []
        for i, r in enumerate(requests):
            try:
                todo.append((i, build(r)))
            except ConnectorError as exc:
                results[i] = WriteResult(key=r.key, error=exc, calls=0.0)
        chunks = [todo[i : i + BATCH_MAX] for i in range(0, len(todo), BATCH_MAX)]
        if len(chunks) == 1:
            self._run_chunk(requests, chunks[0], results, deleting)
        elif chunks:
            futures = [self._executor().submit(self._run_chunk, requests, c, results, deleting) for c in chunks]
            for f in futures:
                f.result()
        return [r for r in results if r is not None]

    def _run_chunk(
        self,
        requests: Sequence[WriteRequest],
        chunk: list[tuple[int, dict[str, Any]]],
        results: list[WriteResult | None],
        deleting: bool,
    ) -> None:
        share = 1.0 / len(chunk)
        subs = []
        for n, (_, sub) in enumerate(chunk):
            sub = dict(sub)
            sub["id"] = str(n + 1)
            headers = {"Prefer": IMMUTABLE}
            headers.update(sub.get("headers") or {})
            if "body" in sub:
                headers["Content-Type"] = "application/json"
            sub["headers"] = headers
            subs.append(sub)
        try:
            resp = self._request("POST", "/$batch", json={"requests": subs})
            answers = {str(a.get("id")): a for a in resp.json().get("responses") or []}
        except ConnectorError as exc:
            for idx, _ in chunk:
                results[idx] = WriteResult(key=requests[idx].key, error=exc, calls=share)
            return
        for n, (idx, _) in enumerate(chunk):
            key = requests[idx].key
            answer = answers.get(str(n + 1))
            if answer is None:
                results[idx] = WriteResult(key=key, error=Transient("graph $batch answer missing"), calls=share)
                continue
            status = int(answer.get("status") or 0)
            body = answer.get("body")
            if deleting and (status < 300 or status == 404):
                ext = requests[idx].external_id or ""
                results[idx] = WriteResult(
                    key=key, record=SideRecord(side="mailbox", external_id=ext, deleted=True), calls=share
                )
            elif status < 300 and isinstance(body, dict):
                results[idx] = WriteResult(key=key, record=self.to_record(body), calls=share)
            elif status < 300:
                results[idx] = WriteResult(key=key, error=Transient("graph $batch answer without a body"), calls=share)
            else:
                results[idx] = WriteResult(key=key, error=error_for(status, answer.get("headers") or {}, body), calls=share)

    # ------------------------------------------------------------------ subscriptions

    def create_subscription(
        self,
        notification_url: str,
        client_state: str,
        *,
        minutes: int = 4230,
        change_type: str = "created,updated,deleted",
        lifecycle_url: str | None = None,
    ) -> dict[str, Any]:
        """Subscribe to this mailbox's contacts; Graph validates `notification_url` first.

        Contacts subscriptions live at most 10,080 minutes; the default (about three
        days) leaves room for a renewal job that runs daily.
        """
        body: dict[str, Any] = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "resource": self._collection_path().lstrip("/"),
            "expirationDateTime": _expiry(minutes),
            "clientState": client_state,
        }
        if lifecycle_url:
            body["lifecycleNotificationUrl"] = lifecycle_url
        return self._request("POST", "/subscriptions", json=body).json()

    def renew_subscription(self, subscription_id: str, *, minutes: int = 4230) -> dict[str, Any]:
        return self._request(
            "PATCH", f"/subscriptions/{quote(subscription_id, safe='')}", json={"expirationDateTime": _expiry(minutes)}
        ).json()

    def delete_subscription(self, subscription_id: str) -> None:
        """Remove a subscription; one already gone counts as removed."""
        try:
            self._request("DELETE", f"/subscriptions/{quote(subscription_id, safe='')}")
        except NotFound:
            pass


def _expiry(minutes: int) -> str:
    when = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    return when.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
