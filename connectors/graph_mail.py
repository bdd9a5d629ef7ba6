"""Microsoft 365 mail through Microsoft Graph v1.0, as a `MailboxMail` (read-only).

Choices that are not obvious from the protocol:

- Graph tracks messages per folder only, so a round is one delta round per followed
  folder (`MailFetchOptions.folders`, in order). The cursor is compact JSON holding
  each folder's `@odata.deltaLink` exactly as Graph gave it; a page token is compact
  JSON naming the folder being read, its `@odata.nextLink` (None: start the folder)
  and the deltaLinks of the folders already finished in this round. A folder that is
  followed but missing from the cursor (newly followed) gets a full listing inside an
  otherwise incremental round; folders no longer followed drop out of the cursor.
- Every request sends `Prefer: IdType="ImmutableId"` and `odata.maxpagesize`: the id
  we key a message by must survive the user filing it, and Graph wants the page size
  on each request, not only the first.
- Query options go on a folder's first delta call only; Graph carries them in its
  tokens. Metadata-only mode (`bodies=False`) leaves `body` (and `uniqueBody`) out of
  `$select`, so no body ever leaves Microsoft; `internetMessageHeaders` is selected to
  read the headers Graph has no property for (References, In-Reply-To,
  List-Unsubscribe, Precedence, Auto-Submitted). A full listing with
  `options.since` adds `$filter=receivedDateTime ge ...`, the only filter delta takes.
- Translation: `from_headers` reads the header-level fields, then Graph's structured
  fields win (from, recipients, internetMessageId, subject, sent/received times,
  categories as labels, the followed folder, conversationId as the thread, direction
  "sent" for Sent Items). Problems the headers alone raised but Graph's fields settle
  except a missing Message-ID: Exchange then assigns an internetMessageId of its own,
  different in each mailbox, so the id synthesized from the headers (the same for every
  copy, flagged) is kept. A message Graph keeps
  without headers (Exchange does so for Sent Items) still gets its identity and
  people, and its References / In-Reply-To from the MAPI extended properties (one
  `$batch` per 20 such messages, see `_with_thread_headers`).
- Removals. `@removed: deleted` is a permanent deletion: a tombstone. `@removed:
  changed` means the message left this folder, usually by a move; with immutable ids
  the same id shows up in the destination folder. Tombstoning it would lose a message
  filed from Inbox to a followed folder when that folder's delta came first in the
  round, so the connector never tombstones on "changed": it reads the message's
  current state (GETs in one `$batch`, 20 per call, with the same `$select`) and
  reports it as an update carrying its new folder - a followed one, or e.g.
  "deleteditems" for Trash, as the protocol wants Trash reported. Only a message the
  read cannot find (404: deleted since) becomes a tombstone. Folder ids are mapped
  back to the well-known names of the followed folders and Deleted Items, read once
  per instance inside the same `$batch`.
- Replays: a page is de-duplicated with the contacts connector's `_dedupe` (the later
  entry wins; an older version or a pre-delete replay never overrides). Across pages
  a replay reaches the caller again, which is harmless: records are keyed by id and
  the last one wins.
- Errors as in `connectors.graph_http.error_for`: 410 / `syncStateNotFound` /
  `resyncRequired` -> CursorExpired; 429 -> RateLimited(retry_after); 5xx and
  timeouts -> Transient; 401 -> AuthExpired; 403 -> ReauthRequired. A cursor or page
  token that is not ours (not our JSON) is CursorExpired too: listing again is the cure.

Sending (`MailboxSend`, see `send`): a draft created from Concord's own MIME, big
attachments uploaded to it, then `/send`; `find_sent` filters Sent Items on
internetMessageId. Error mapping for sends: 400 ErrorInvalidRecipients ->
SendRejected("invalid_recipient"); 413 / ErrorMessageSizeExceeded ->
SendRejected("too_large"); ErrorSubmissionQuotaExceeded (the daily recipient limit),
or a 429 whose Retry-After is over an hour away -> SendRejected("quota_exceeded")
(the same choice as Gmail's, see `connectors.gmail_mail`); other 429 ->
RateLimited(retry_after); other 400 -> SendRejected("rejected"); 5xx and transport
errors -> Transient (the message may have gone: look in Sent first).
"""

from __future__ import annotations

import base64
import email
import json
from email import policy as email_policy
from email.message import Message
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlencode

import httpx

from connectors.graph_contacts import IMMUTABLE, _dedupe, _parse_time
from connectors.graph_http import GraphConnection, error_for
from connectors.protocols import DeltaPage
from models.errors import ConnectorError, CursorExpired, RateLimited, SendRejected, Transient
from models.mail import Address, MailFetchOptions, MailMessage, normalize_message_id
from models.send import SentRef
from models.record import SideRecord
from sync.mail.content import from_headers, html_to_text

BATCH_MAX = 20
#: what every read selects; `body` joins only when bodies are enabled
BASE_SELECT = (
    "internetMessageId", "conversationId", "subject", "from", "sender", "toRecipients", "ccRecipients",
    "bccRecipients", "receivedDateTime", "sentDateTime", "categories", "parentFolderId", "hasAttachments",
    "internetMessageHeaders", "changeKey", "lastModifiedDateTime",
)
#: problems from the header list alone that Graph's own fields can settle
_SETTLED_BY_GRAPH = {
    "missing_message_id": "internetMessageId",
    "bad_message_id": "internetMessageId",
    "missing_from": "from",
    "missing_date": "sentDateTime",
    "bad_date": "sentDateTime",
}
#: PidTagInternetReferences and PidTagInReplyToId as Graph names them (see `_thread_headers`)
REFERENCES_PROP = "String 0x1039"
IN_REPLY_TO_PROP = "String 0x1042"

MailRecord = SideRecord[MailMessage]

#: attachments above this go through an upload session (Graph's documented threshold)
UPLOAD_THRESHOLD = 3 * 1024 * 1024
#: Graph refuses a request body over 4 MB; the base64 MIME of a draft must stay under it
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: upload chunk: a multiple of 320 KiB under Graph's 4 MB chunk limit
CHUNK_BYTES = 10 * 320 * 1024
#: a throttle further away than this is the daily sending limit
DAILY_LIMIT_AFTER_S = 3600.0


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _address(value: Any) -> Address | None:
    ea = value.get("emailAddress") if isinstance(value, dict) else None
    if not isinstance(ea, dict) or not isinstance(ea.get("address"), str) or "@" not in ea["address"]:
        return None
    name = ea.get("name") if isinstance(ea.get("name"), str) else ""
    # Exchange repeats the address as the name when there is none
    return Address(email=ea["address"], name="" if name.strip().lower() == ea["address"].strip().lower() else name)


def _addresses(values: Any) -> tuple[Address, ...] | None:
    if not isinstance(values, list):
        return None
    return tuple(a for a in (_address(v) for v in values) if a is not None)


class GraphMail(GraphConnection):
    """Mail of one Microsoft 365 mailbox (`provider = "microsoft"`), read-only."""

    provider = "microsoft"

    def __init__(
        self,
        base_url: str,
        token_provider: Callable[[], str],
        *,
        options: MailFetchOptions | None = None,
        client: httpx.Client | None = None,
        page_size: int = 50,
        timeout: float = 30.0,
        max_concurrency: int = 4,
        mailbox_key: str | None = None,
    ) -> None:
        self.options = options or MailFetchOptions()
        if not self.options.folders:
            raise ValueError("GraphMail needs at least one folder to follow")
        super().__init__(base_url, token_provider, client=client, timeout=timeout,
                         max_concurrency=max_concurrency, mailbox_key=mailbox_key)
        self.page_size = page_size
        #: folder id -> well-known name or the id the options name it by
        self._folder_names: dict[str, str] | None = None

    # ------------------------------------------------------------------ plumbing

    def _select(self) -> str:
        fields = list(BASE_SELECT)
        if self.options.bodies:
            fields.append("body")
        return ",".join(fields)

    def _request(self, method: str, url: str, *, params: dict[str, str] | None = None, body: Any = None,
                 text: bytes | None = None) -> httpx.Response:
        """One HTTP call under the mailbox's in-flight budget; errors become ConnectorErrors.
        `text` goes as a text/plain body (a base64 MIME message)."""
        hdrs = {
            "Authorization": f"Bearer {self._token_provider()}",
            "Prefer": f"{IMMUTABLE}, odata.maxpagesize={self.page_size}",
            "Accept": "application/json",
        }
        content = None
        if text is not None:
            content = text
            hdrs["Content-Type"] = "text/plain"
        elif body is not None:
            content = json.dumps(body, ensure_ascii=True).encode("ascii")
            hdrs["Content-Type"] = "application/json"
        return self._send(method, url, params=params, content=content, headers=hdrs)

    # ------------------------------------------------------------------ reads

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        folders = self.options.folders
        links = self._decode_cursor(cursor)
        state = self._decode_page(page_token) if page_token else {"i": 0, "n": None, "d": {}}
        index = state["i"]
        if not 0 <= index < len(folders):
            raise CursorExpired("graph mail page token names no followed folder")
        folder = folders[index]
        if state["n"]:
            resp = self._request("GET", state["n"])  # the link exactly as Graph gave it
        elif folder in links:
            resp = self._request("GET", links[folder])
        else:
            params = {"$select": self._select()}
            if self.options.since is not None:
                params["$filter"] = f"receivedDateTime ge {_iso(self.options.since)}"
            resp = self._request("GET", f"/me/mailFolders/{quote(folder, safe='')}/messages/delta", params=params)
        body = resp.json()
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, list):
            raise Transient("graph delta page without a value array")
        next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
        if not next_link and not delta_link:
            raise Transient("graph delta page without nextLink or deltaLink")
        records = self._records(_dedupe(value), folder)
        done = dict(state["d"])
        if next_link:
            return DeltaPage(records=records, next_page=self._encode({"i": index, "n": next_link, "d": done}))
        done[folder] = delta_link
        if index + 1 < len(folders):
            return DeltaPage(records=records, next_page=self._encode({"i": index + 1, "n": None, "d": done}))
        return DeltaPage(records=records, cursor=self._encode({"v": 1, "f": done}))

    def get(self, external_id: str) -> SideRecord:
        item = self._request("GET", f"/me/messages/{quote(external_id, safe='')}", params={"$select": self._select()}).json()
        names = self._folder_map()
        rec = self.item_to_record(item, names.get(str(item.get("parentFolderId") or ""), item.get("parentFolderId")))
        return self._with_thread_headers([rec], [rec.external_id] if not item.get("internetMessageHeaders") else [])[0]

    # ------------------------------------------------------------------ send

    def send(self, raw: bytes, *, reply_to_message_id: str | None = None) -> SentRef:
        """Send `raw` keeping its Message-ID: draft from MIME, big attachments uploaded, /send.

        Why a draft from MIME and not sendMail JSON or createReply: both make Exchange
        choose its own Message-ID, and then `find_sent` could never recognise a message
        an earlier attempt sent, which is what makes a retry after an ambiguous failure
        send exactly once. Threading rides on the MIME's References and In-Reply-To
        (Exchange puts the draft in the conversation they name), so
        `reply_to_message_id` needs no call here.

        Graph refuses requests over 4 MB, so attachments over 3 MB (and then the biggest
        others, while the base64 MIME would still pass 4 MB) are taken out of the MIME
        and uploaded to the draft through upload sessions. A failure before `/send` is
        cleaned up (the draft deleted) and nothing was sent; a refusal of `/send` (a
        SendRejected, or a 429: throttled requests are not processed) deletes the draft
        too. A 5xx or lost connection on `/send` leaves the draft alone: it may have
        been sent, and the caller looks in Sent Items (a draft that was not sent stays
        in Drafts; the retry makes a new one).
        """
        msg = email.message_from_bytes(raw, policy=email_policy.default)
        uploads = _take_out_attachments(msg)
        mime = msg.as_bytes(policy=email_policy.SMTP) if uploads else raw
        try:
            draft = self._request("POST", "/me/messages", text=base64.b64encode(mime)).json()
        except ConnectorError as exc:
            raise _send_error(exc) from exc
        did = str(draft["id"])
        try:
            for part in uploads:
                self._upload(did, part)
        except ConnectorError as exc:
            self._discard(did)
            raise _send_error(exc) from exc
        try:
            self._request("POST", f"/me/messages/{quote(did, safe='')}/send")
        except ConnectorError as exc:
            out = _send_error(exc)
            if isinstance(out, (SendRejected, RateLimited)):  # refused before submission: not sent
                self._discard(did)
            raise out from exc
        return SentRef(provider_message_id=did, provider_thread_id=str(draft.get("conversationId") or "") or None)

    def _upload(self, message_id: str, part: Message) -> None:
        data = part.get_payload(decode=True) or b""
        item: dict[str, Any] = {"attachmentType": "file", "name": part.get_filename() or "attachment",
                                "size": len(data), "contentType": part.get_content_type()}
        cid = str(part.get("Content-ID") or "").strip().strip("<>")
        if (part.get_content_disposition() or "") == "inline" or cid:
            item.update(isInline=True, contentId=cid or None)
        session = self._request("POST", f"/me/messages/{quote(message_id, safe='')}/attachments/createUploadSession",
                                body={"AttachmentItem": item}).json()
        url = str(session["uploadUrl"])
        for start in range(0, len(data), CHUNK_BYTES):
            chunk = data[start : start + CHUNK_BYTES]
            # a pre-authenticated URL: the bearer must not go with it
            hdrs = {"Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{len(data)}",
                    "Content-Type": "application/octet-stream"}
            self._send("PUT", url, content=chunk, headers=hdrs, what="graph upload")

    def _discard(self, message_id: str) -> None:
        """Best effort: a draft nobody will send must not stay in the user's Drafts."""
        try:
            self._request("POST", f"/me/messages/{quote(message_id, safe='')}/permanentDelete")
        except ConnectorError:
            pass

    def find_sent(self, message_id: str) -> SentRef | None:
        """The message with this Message-ID in Sent Items, or None (one GET)."""
        mid = normalize_message_id(message_id)
        if not mid:
            return None
        literal = f"<{mid}>".replace("'", "''")
        body = self._request("GET", "/me/mailFolders('sentitems')/messages",
                             params={"$filter": f"internetMessageId eq '{literal}'",
                                     "$select": "id,conversationId,internetMessageId", "$top": "5"}).json()
        for item in body.get("value") or []:
            if isinstance(item, dict) and item.get("id"):
                return SentRef(provider_message_id=str(item["id"]),
                               provider_thread_id=str(item.get("conversationId") or "") or None)
        return None

    # ------------------------------------------------------------------ subscriptions

    def create_subscription(
        self,
        notification_url: str,
        client_state: str,
        *,
        resource: str = "me/messages",
        minutes: int = 4230,
        change_type: str = "created,updated,deleted",
        lifecycle_url: str | None = None,
    ) -> dict[str, Any]:
        """Subscribe to the mailbox's messages (or one folder's, `me/mailFolders('inbox')/messages`).

        A notification only wakes a delta round; the round reads what changed, so the
        whole mailbox is the simplest resource. Sent with ImmutableId, so the ids in
        notifications are the ids records are keyed by.
        """
        return self._subscribe(resource, notification_url, client_state,
                               minutes=minutes, change_type=change_type, lifecycle_url=lifecycle_url)

    # ------------------------------------------------------------------ cursor and page token

    @staticmethod
    def _encode(value: dict[str, Any]) -> str:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    @staticmethod
    def _decode_cursor(cursor: str | None) -> dict[str, str]:
        if not cursor:
            return {}
        try:
            data = json.loads(cursor)
            links = data["f"]
            if data.get("v") != 1 or not isinstance(links, dict) or not all(isinstance(v, str) for v in links.values()):
                raise ValueError
        except (ValueError, KeyError, TypeError) as exc:
            raise CursorExpired("graph mail cursor not issued by this connector") from exc
        return links

    @staticmethod
    def _decode_page(token: str) -> dict[str, Any]:
        try:
            data = json.loads(token)
            if not isinstance(data.get("i"), int) or not isinstance(data.get("d"), dict):
                raise ValueError
            if data.get("n") is not None and not isinstance(data["n"], str):
                raise ValueError
        except (ValueError, AttributeError, TypeError) as exc:
            raise CursorExpired("graph mail page token not issued by this connector") from exc
        return data

    # ------------------------------------------------------------------ translation

    def _records(self, items: list[dict[str, Any]], folder: str) -> list[SideRecord]:
        out: list[SideRecord | None] = []
        moved: dict[str, int] = {}
        headerless: list[str] = []
        for item in items:
            removed = item.get("@removed")
            if removed is None:
                out.append(self.item_to_record(item, folder))
                if not item.get("internetMessageHeaders"):
                    headerless.append(str(item.get("id")))
            elif isinstance(removed, dict) and removed.get("reason") == "changed":
                moved[str(item["id"])] = len(out)
                out.append(None)  # filled from the message's current state below
            else:
                out.append(MailRecord(side="mailbox", external_id=str(item["id"]), deleted=True))
        if moved:
            for iid, rec in self._current(list(moved), headerless).items():
                out[moved[iid]] = rec
        return self._with_thread_headers([r for r in out if r is not None], headerless)

    def _with_thread_headers(self, records: list[SideRecord], headerless: list[str]) -> list[SideRecord]:
        """References and In-Reply-To for messages Graph gave no headers for.

        Exchange writes internetMessageHeaders in transport, so the copy of a message in
        Sent Items has none, and a reply the user sent would lose its thread. Both
        headers are MAPI properties too, readable as single-value extended properties;
        one `$batch` of GETs per 20 such messages reads them (delta takes no `$expand`).
        """
        wanted = [r.external_id for r in records if r.external_id in set(headerless) and not r.deleted and r.content]
        if not wanted:
            return records
        expand = (f"singleValueExtendedProperties($filter=id eq '{REFERENCES_PROP}' or id eq '{IN_REPLY_TO_PROP}')")
        query = urlencode({"$select": "id", "$expand": expand}, quote_via=quote)
        work = [(iid, f"/me/messages/{quote(iid, safe='')}?{query}") for iid in dict.fromkeys(wanted)]
        found: dict[str, dict[str, str]] = {}
        for start in range(0, len(work), BATCH_MAX):
            for iid, a in self._batch(work[start : start + BATCH_MAX]).items():
                status = int(a.get("status") or 0)
                if status == 404:
                    continue  # gone since: the next round reports it
                if status >= 300:
                    raise error_for(status, a.get("headers") or {}, a.get("body"))
                props = (a.get("body") or {}).get("singleValueExtendedProperties") or []
                found[iid] = {str(p.get("id")).lower(): str(p.get("value") or "") for p in props if isinstance(p, dict)}
        out = []
        for rec in records:
            props = found.get(rec.external_id)
            if props and isinstance(rec.content, MailMessage):
                refs = props.get(REFERENCES_PROP.lower(), "")
                irt = props.get(IN_REPLY_TO_PROP.lower(), "")
                msg = MailMessage.model_validate({**rec.content.model_dump(), "references": refs or irt, "in_reply_to": irt})
                rec = rec.model_copy(update={"content": msg})
            out.append(rec)
        return out

    def _current(self, ids: list[str], headerless: list[str]) -> dict[str, SideRecord]:
        """Where messages that left a folder are now, one `$batch` per 20 (see the module docstring).

        The folder ids are resolved in the same `$batch` the first time, so a round
        with moves costs no extra call for them.
        """
        query = urlencode({"$select": self._select()}, quote_via=quote)
        work = self._folder_lookups() + [(iid, f"/me/messages/{quote(iid, safe='')}?{query}") for iid in ids]
        answers: dict[str, dict[str, Any]] = {}
        for start in range(0, len(work), BATCH_MAX):
            answers.update(self._batch(work[start : start + BATCH_MAX]))
        names = self._absorb_folders(answers)
        found: dict[str, SideRecord] = {}
        for iid in ids:
            a = answers.get(iid)
            if a is None:
                raise Transient("graph $batch answer missing")
            status = int(a.get("status") or 0)
            if status == 404:
                found[iid] = MailRecord(side="mailbox", external_id=iid, deleted=True)
            elif status >= 300:
                raise error_for(status, a.get("headers") or {}, a.get("body"))
            else:
                item = a.get("body") or {}
                parent = str(item.get("parentFolderId") or "")
                found[iid] = self.item_to_record(item, names.get(parent, parent or None))
                if not item.get("internetMessageHeaders"):
                    headerless.append(iid)
        return found

    def _folder_map(self) -> dict[str, str]:
        lookups = self._folder_lookups()
        return self._absorb_folders(self._batch(lookups) if lookups else {})

    def _folder_lookups(self) -> list[tuple[str, str]]:
        if self._folder_names is not None:
            return []
        names = dict.fromkeys(self.options.folders + ("deleteditems",))
        return [("f:" + n, f"/me/mailFolders/{quote(n, safe='')}?$select=id") for n in names]

    def _absorb_folders(self, answers: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Folder id -> the name the options follow it by (or "deleteditems"), kept per instance."""
        if self._folder_names is None:
            self._folder_names = {}
            for key, a in answers.items():
                body = a.get("body")
                if key.startswith("f:") and int(a.get("status") or 0) < 300 and isinstance(body, dict) and body.get("id"):
                    self._folder_names[str(body["id"])] = key[2:]
        return self._folder_names

    def _batch(self, subs: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """GETs in one `$batch`; answers by our key. A failed call as a whole raises."""
        wire = [{"id": str(n + 1), "method": "GET", "url": url, "headers": {"Prefer": IMMUTABLE}} for n, (_, url) in enumerate(subs)]
        resp = self._request("POST", "/$batch", body={"requests": wire})
        by_wire = {str(a.get("id")): a for a in resp.json().get("responses") or [] if isinstance(a, dict)}
        out = {}
        for n, (key, _) in enumerate(subs):
            a = by_wire.get(str(n + 1))
            if a is not None:
                out[key] = a
        return out

    def item_to_record(self, item: dict[str, Any], folder: str | None) -> SideRecord:
        """One Graph message -> a record; a message we cannot read is a record with problems."""
        iid = str(item.get("id") or "")
        try:
            return MailRecord(
                side="mailbox",
                external_id=iid,
                content=self._message(item, folder),
                etag=item.get("@odata.etag") or (f'W/"{item["changeKey"]}"' if item.get("changeKey") else None),
                updated_at=_parse_time(item.get("lastModifiedDateTime")),
            )
        except Exception as exc:  # one malformed message must not fail its page
            return MailRecord(side="mailbox", external_id=iid, problems=(f"untranslatable:{type(exc).__name__}",))

    def _message(self, item: dict[str, Any], folder: str | None) -> MailMessage:
        headers = [
            (h.get("name"), h.get("value"))
            for h in item.get("internetMessageHeaders") or []
            if isinstance(h, dict) and isinstance(h.get("name"), str)
        ]
        base = from_headers(headers)
        problems = set(base.problems)
        update: dict[str, Any] = {}
        mid = item.get("internetMessageId")
        assigned = bool(headers) and base.synthesized_id
        if isinstance(mid, str) and "@" in mid and not assigned:
            update["message_id"] = mid
            update["synthesized_id"] = False
        # Headers without a Message-ID: Exchange made up the internetMessageId, different in
        # every mailbox. The id synthesized from the headers is the one all copies share.
        sender = _address(item.get("from")) or _address(item.get("sender"))
        if sender is not None:
            update["sender"] = sender
        for key, field in (("toRecipients", "to"), ("ccRecipients", "cc"), ("bccRecipients", "bcc")):
            got = _addresses(item.get(key))
            if got is not None and (got or not headers):
                update[field] = got
        if isinstance(item.get("subject"), str):
            update["subject"] = item["subject"][:2000]
        sent_at = _parse_time(item.get("sentDateTime"))
        if sent_at is not None and base.sent_at is None:
            update["sent_at"] = sent_at
        update["received_at"] = _parse_time(item.get("receivedDateTime"))
        update["labels"] = tuple(c for c in item.get("categories") or [] if isinstance(c, str))
        update["folder"] = folder
        update["direction"] = "sent" if folder == "sentitems" else "received"
        if isinstance(item.get("conversationId"), str):
            update["provider_thread_id"] = item["conversationId"]
        if str(item.get("@odata.type") or "").lower().endswith("eventmessage"):
            update["calendar_invite"] = True
        for problem, field in _SETTLED_BY_GRAPH.items():
            if problem in problems and item.get(field) and not (assigned and field == "internetMessageId"):
                problems.discard(problem)
        if self.options.bodies:
            body = item.get("body") if isinstance(item.get("body"), dict) else {}
            text = body.get("content") if isinstance(body.get("content"), str) else ""
            if len(text.encode("utf-8", "surrogatepass")) > self.options.max_body_bytes:
                problems.add("too_large")
            else:
                if str(body.get("contentType") or "").lower() == "html":
                    text = html_to_text(text)
                update["body_text"] = text.replace("\x00", "")
        update["problems"] = tuple(sorted(problems))
        # re-validated so the model's normalisers apply to the overlaid values
        return MailMessage.model_validate({**base.model_dump(), **update})


def _take_out_attachments(msg: Message) -> list[Message]:
    """Remove from `msg` the attachment parts that must be uploaded; returns them.

    Over UPLOAD_THRESHOLD always; then the biggest remaining while the base64 of the
    MIME would still pass MAX_REQUEST_BYTES."""
    parts = [p for p in msg.walk() if not p.is_multipart() and p is not msg
             and (p.get_filename() or (p.get_content_disposition() or "") == "attachment")]
    sized = sorted(((len(p.get_payload(decode=True) or b""), n, p) for n, p in enumerate(parts)), key=lambda t: (-t[0], t[1]))
    chosen = [p for size, _, p in sized if size > UPLOAD_THRESHOLD]
    rest = [(size, p) for size, _, p in sized if size <= UPLOAD_THRESHOLD]

    def strip(targets: list[Message]) -> None:
        for container in msg.walk():
            payload = container.get_payload() if container.is_multipart() else None
            if isinstance(payload, list):
                container.set_payload([p for p in payload if not any(p is t for t in targets)])

    strip(chosen)
    while rest and len(msg.as_bytes(policy=email_policy.SMTP)) * 4 // 3 + 4 > MAX_REQUEST_BYTES:
        chosen.append(rest.pop(0)[1])
        strip(chosen)
    return chosen


def _send_error(exc: ConnectorError) -> ConnectorError:
    """A refused `/send` -> the recovery class a sender needs (module docstring)."""
    status = int(exc.detail.get("status") or 0)
    code = str(exc.detail.get("code") or "").lower()
    wait = exc.retry_after if isinstance(exc, RateLimited) else None
    if code == "errorsubmissionquotaexceeded" or (status == 429 and wait is not None and wait > DAILY_LIMIT_AFTER_S):
        return SendRejected(exc.message, reason="quota_exceeded", detail={**exc.detail, "retry_after": wait})
    if code == "errorinvalidrecipients":
        return SendRejected(exc.message, reason="invalid_recipient", detail=exc.detail)
    if status == 413 or code in ("errormessagesizeexceeded", "requestentitytoolarge"):
        return SendRejected(exc.message, reason="too_large", detail=exc.detail)
    if status == 400:
        return SendRejected(exc.message, reason="rejected", detail=exc.detail)
    return exc
