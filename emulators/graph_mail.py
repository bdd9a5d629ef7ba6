"""The mail surface of the Graph emulator: mail folders, messages, messages delta.

Mounted into `emulators.graph.GraphState` (`state.mail`), so one server answers
contacts, mail, `$batch` and subscriptions on messages, with the same faults,
throttling, request log and stats. It reproduces what a mail connector must survive
(PROVIDERS.md section D):

- delta per folder (`/me/mailFolders/{id}/messages/delta`), query options honoured
  only on the first call (`$select`, `$top`, `$filter` on `receivedDateTime ge|gt`
  only, `changeType`), then carried by opaque `$skiptoken` / `$deltatoken` links in
  Graph's `mailFolders('id')` form, so a client that rebuilds links breaks;
- replays, empty pages with a nextLink, non-coalesced rounds, and expired sync state
  (410 / `syncStateNotFound` / `resyncRequired`), all steered by the same knobs as
  contacts (`delta_replays`, `delta_empty_pages`, `coalesce`, `expire_delta_tokens`);
- ids that change when a message moves unless the request prefers
  `IdType="ImmutableId"`; a move is reported by the old folder's delta as
  `@removed: changed` and by the new folder's as a new item;
- `body` only when selected (or nothing selected), `internetMessageHeaders` only when
  selected, as Graph does, so a test can prove a metadata-only client never asks for a
  body (the request log holds every query);
- no `internetMessageHeaders` on Sent Items copies (Exchange writes headers in
  transport; `headers_in_sent_items` turns them on), with References / In-Reply-To
  readable as the extended properties `String 0x1039` / `String 0x1042` through
  `$expand=singleValueExtendedProperties($filter=id eq ...)` on a message GET;
- change notifications on `me/messages` and `me/mailFolders('inbox')/messages`
  subscriptions, posted as changes happen (`auto_notify`).

Messages enter through `deliver(raw)`: RFC 822 bytes parsed with the stdlib `email`
package into Graph's fields, `receivedDateTime` backdated from the Date header.
`store_message(fields, folder)` is the single entry point for new messages.

Sending, as a client that must send exactly once sees it:

- `POST /me/messages` with `Content-Type: text/plain` and a base64 MIME body creates a
  draft in Drafts that keeps the MIME's Message-ID as `internetMessageId` and joins
  the conversation its References root names (201, the message). JSON drafts are not
  emulated. The whole request is limited to 4 MB (`GraphState.max_request_bytes`),
  which is why big attachments go through:
- `POST /me/messages/{id}/attachments/createUploadSession` `{"AttachmentItem":
  {attachmentType, name, size, contentType, isInline, contentId}}` -> 201 with an
  `uploadUrl` (outside `/v1.0`, refused with 401 if it carries a bearer, as a
  pre-authenticated URL is), then `PUT` chunks of at most 4 MB with `Content-Range:
  bytes a-b/total`: 200 and `nextExpectedRanges` until the last, 201 on completion.
  A chunk that does not start where the last ended is 416; the request log records
  each PUT with its range.
- `GET /me/messages/{id}/attachments` lists attachments with `contentBytes`.
- `POST /me/messages/{id}/send` -> 202: the draft moves to Sent Items (immutable id
  kept, headers dropped as for every Sent Items copy). Refusals: no or malformed
  recipients 400 `ErrorInvalidRecipients`; MIME plus attachments over
  `max_message_bytes` (default 35 MB, Exchange Online's default MaxSendSize) 413
  `ErrorMessageSizeExceeded`; over `send_limit_per_day` recipients in a rolling 24
  hours (default 10,000: Exchange counts recipients in a rolling day) 429
  `ErrorSubmissionQuotaExceeded` with Retry-After until the window frees (the code
  Graph uses for this is UNCONFIRMED). Throttling (429 + Retry-After) comes from the
  state's faults (`inject_fault(429, path="/send$")`) and request budget.
  `fail_sends(count, status, when)`: "after" moves the message to Sent Items and then
  answers 500/503 (sent, but the client saw an error), "before" fails untouched.
  Delivery to other mailboxes is not emulated (one mailbox per server).
- `GET /me/mailFolders('sentitems')/messages?$filter=internetMessageId eq '<id>'`
  (also `/me/messages`): the Sent lookup; `$select` and `$top` honoured, no other
  filter.
"""

from __future__ import annotations

import base64
import copy
import email
import hashlib
import html as html_lib
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as email_policy
from email.utils import getaddresses, parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from emulators.graph import (
    TENANT_ID,
    USER_ID,
    SubRequest,
    SubResponse,
    _error,
    _iso,
    _max_page_size,
    _new_change_key,
    _new_id,
    _now,
    _parse_iso,
    _prefers_immutable,
)

if TYPE_CHECKING:  # pragma: no cover
    from emulators.graph import GraphState

#: well-known folder names Graph accepts in place of an id, and their display names
WELL_KNOWN = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "deleteditems": "Deleted Items",
    "drafts": "Drafts",
    "archive": "Archive",
    "junkemail": "Junk Email",
}
ROOT_FOLDER_ID = "AQMkADmsgfolderroot"

#: MAPI properties Graph exposes as single-value extended properties (PidTagInternetReferences,
#: PidTagInReplyToId): the only way to read threading headers of a Sent Items copy
REFERENCES_PROP = "String 0x1039"
IN_REPLY_TO_PROP = "String 0x1042"
_EXPAND_PROPS = re.compile(r"^\s*singleValueExtendedProperties\s*\(\s*\$filter\s*=(.*)\)\s*$", re.IGNORECASE)
_FILTER = re.compile(r"^\s*receivedDateTime\s+(ge|gt)\s+(\S+)\s*$", re.IGNORECASE)
_FOLDER_SEG = r"mailFolders(?:\('([^']+)'\)|/([^/]+))"
_MSGID_FILTER = re.compile(r"^\s*internetMessageId\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+$")
MAX_CHUNK = 4 * 1024 * 1024
DAY_S = 86_400.0


@dataclass
class _Message:
    immutable_id: str
    rest_id: str
    folder_id: str
    data: dict[str, Any]
    change_key: str
    created: datetime
    modified: datetime
    created_seq: int = 0
    deleted: bool = False


@dataclass
class _MailEvent:
    seq: int
    kind: str  # "create" | "update" | "move" | "delete"
    immutable_id: str
    folder_before: str | None
    folder_after: str | None
    snapshot: dict[str, Any]


@dataclass
class _MailRound:
    scope: str
    pages: list[list[dict]]
    end_seq: int
    select: list[str] | None
    page_size: int
    flt: tuple[str, datetime] | None
    change_types: set[str] | None


def _addresses(values: list[str]) -> list[dict[str, Any]]:
    out = []
    for name, addr in getaddresses([str(v) for v in values if v]):
        if addr:
            out.append({"emailAddress": {"name": name or addr, "address": addr}})
    return out


def _strip_html(text: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", text))


def parse_rfc822(raw: bytes) -> dict[str, Any]:
    """Graph's message fields from RFC 822 bytes, as Exchange fills them on delivery.

    Lenient like Exchange: a message it cannot parse still arrives, with what was read.
    """
    try:
        msg = email.message_from_bytes(raw, policy=email_policy.default)
    except Exception:
        msg = email.message_from_bytes(b"Subject: (unparseable)\r\n\r\n")

    def get(name: str) -> str:
        try:
            v = msg.get(name)
            return " ".join(str(v).split()) if v is not None else ""
        except Exception:
            return ""

    def all_of(name: str) -> list[str]:
        try:
            return [str(v) for v in msg.get_all(name, [])]
        except Exception:
            return []

    sent: datetime | None = None
    try:
        if get("Date"):
            sent = parsedate_to_datetime(get("Date")).astimezone(timezone.utc)
    except Exception:
        sent = None
    content_type, content, calendar, attachments = "text", "", False, False
    files: list[dict[str, Any]] = []
    try:
        for part in msg.walk():
            if part.get_content_type() == "text/calendar":
                calendar = True
            if part.get_filename() or (part.get_content_disposition() or "") == "attachment":
                attachments = True
                if not part.is_multipart():
                    data = part.get_payload(decode=True) or b""
                    cid = str(part.get("Content-ID") or "").strip().strip("<>")
                    files.append(_attachment(str(part.get_filename() or "attachment"), part.get_content_type(), data,
                                             inline=(part.get_content_disposition() or "") == "inline", content_id=cid))
        body_part = msg.get_body(preferencelist=("html", "plain"))
        if body_part is not None:
            content = str(body_part.get_content())
            content_type = "html" if body_part.get_content_type() == "text/html" else "text"
    except Exception:
        pass
    preview_src = _strip_html(content) if content_type == "html" else content
    headers = []
    for name, value in msg.items():
        try:
            headers.append({"name": name, "value": " ".join(str(value).split())})
        except Exception:
            continue
    frm = _addresses(all_of("From"))
    sender = _addresses(all_of("Sender")) or frm
    mid = get("Message-ID").split()[0] if get("Message-ID") else ""
    return {
        "subject": get("Subject"),
        "from": frm[0] if frm else None,
        "sender": sender[0] if sender else None,
        "toRecipients": _addresses(all_of("To")),
        "ccRecipients": _addresses(all_of("Cc")),
        "bccRecipients": _addresses(all_of("Bcc")),
        "replyTo": _addresses(all_of("Reply-To")),
        "internetMessageId": mid,
        "sentDateTime": _iso(sent) if sent else None,
        "body": {"contentType": content_type, "content": content},
        "bodyPreview": " ".join(preview_src.split())[:255],
        "hasAttachments": attachments,
        "internetMessageHeaders": headers,
        "_references": (get("References") or get("In-Reply-To")).split(),
        "_props": {k: v for k, v in ((REFERENCES_PROP, get("References")), (IN_REPLY_TO_PROP, get("In-Reply-To"))) if v},
        "_calendar": calendar,
        "_attachments": files,
    }


def _attachment(name: str, content_type: str, data: bytes, *, inline: bool = False, content_id: str = "") -> dict[str, Any]:
    return {"id": _new_id("AAMkAGatt"), "name": name, "contentType": content_type or "application/octet-stream",
            "size": len(data), "isInline": inline, "contentId": content_id or None, "bytes": data}


class MailStore:
    """Mail folders and messages of the emulated mailbox; shares the state's lock and knobs."""

    def __init__(self, state: "GraphState") -> None:
        self.state = state
        self.lock = state.lock
        self.folders: dict[str, dict[str, Any]] = {}
        self._well_known: dict[str, str] = {}
        for name, display in WELL_KNOWN.items():
            fid = _new_id("AQMkAD" + name)
            self.folders[fid] = {"displayName": display, "parentFolderId": ROOT_FOLDER_ID}
            self._well_known[name] = fid
        self._messages: dict[str, _Message] = {}
        self._rest_index: dict[str, str] = {}
        self._events: list[_MailEvent] = []
        self._seq = 0
        self._conversations: dict[str, str] = {}
        self._delta_tokens: dict[str, tuple[str, int, list[str] | None, int, Any, Any]] = {}
        self._skip_tokens: dict[str, tuple[str, int]] = {}
        self._rounds: dict[str, _MailRound] = {}
        self._expired: dict[str, tuple[int, str]] = {}
        #: post change notifications to message subscriptions as changes happen
        self.auto_notify = True
        #: Exchange keeps no internetMessageHeaders on the Sent Items copy of a message
        #: (headers are written in transport); True gives them anyway
        self.headers_in_sent_items = False
        self.notification_errors: list[str] = []
        #: recipients the mailbox may send to in a rolling 24 hours
        self.send_limit_per_day = 10_000
        #: MIME plus attachments a sent message may weigh (Exchange Online's default MaxSendSize)
        self.max_message_bytes = 35 * 1024 * 1024
        self._sends: deque[tuple[float, int]] = deque()
        #: scripted send failures: [remaining, status, "before" | "after"]
        self._send_faults: list[list] = []
        #: upload session token -> {message, item, received bytes}
        self._uploads: dict[str, dict[str, Any]] = {}
        self.clock = time.time

    # ------------------------------------------------------------------ test control

    def folder_id(self, name_or_id: str) -> str | None:
        key = str(name_or_id)
        if key in self.folders:
            return key
        return self._well_known.get(key.lower())

    def add_folder(self, display_name: str) -> str:
        with self.lock:
            fid = _new_id("AQMkADfolder")
            self.folders[fid] = {"displayName": display_name, "parentFolderId": ROOT_FOLDER_ID}
            return fid

    def deliver(self, raw: bytes, *, folder: str = "inbox", categories: tuple[str, ...] = (),
                received: datetime | None = None) -> str:
        """A message arrives (or is filed in Sent Items); its immutable id.

        receivedDateTime is the Date header when there is one (tests backdate mail
        that way), else now.
        """
        fields = parse_rfc822(raw)
        if received is None:
            received = _parse_iso(fields["sentDateTime"]) if fields.get("sentDateTime") else _now()
        fields["receivedDateTime"] = _iso(received)
        fields["categories"] = list(categories)
        return self.store_message(fields, folder)

    def store_message(self, fields: dict[str, Any], folder: str) -> str:
        """Every new message goes through here (deliver now, sendMail later)."""
        with self.lock:
            fid = self.folder_id(folder)
            if fid is None:
                raise KeyError("unknown folder")
            data = dict(fields)
            if not data.get("internetMessageId"):
                data["internetMessageId"] = f"<{secrets.token_hex(12)}@emulator.outlook.example>"
            root = (data.pop("_references", None) or [data["internetMessageId"]])[0]
            conv = self._conversations.get(root) or self._conversations.get(data["internetMessageId"])
            if conv is None:
                conv = "AAQkAD" + base64.urlsafe_b64encode(hashlib.sha256(root.encode()).digest()[:18]).decode()
            self._conversations.setdefault(root, conv)
            self._conversations.setdefault(data["internetMessageId"], conv)
            data["conversationId"] = conv
            data.setdefault("receivedDateTime", _iso(_now()))
            data.setdefault("categories", [])
            if fid == self._well_known["sentitems"] and not self.headers_in_sent_items:
                data["internetMessageHeaders"] = None
            now = _now()
            m = _Message(_new_id("AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0"), _new_id("AAMkAGI2TG93AAA"), fid, data,
                         _new_change_key(), now, now)
            self._messages[m.immutable_id] = m
            self._rest_index[m.rest_id] = m.immutable_id
            self._record(m, "create", None, fid)
            m.created_seq = self._seq
            notes = self._notes_for(m, "created", fid)
        self._post(notes)
        return m.immutable_id

    def set_categories(self, message_id: str, categories: list[str]) -> None:
        with self.lock:
            m = self._require(message_id)
            m.data["categories"] = list(dict.fromkeys(categories))
            self._changed(m)
            self._record(m, "update", m.folder_id, m.folder_id)
            notes = self._notes_for(m, "updated", m.folder_id)
        self._post(notes)

    def add_category(self, message_id: str, category: str) -> None:
        with self.lock:
            cats = list(self._require(message_id).data.get("categories") or [])
        self.set_categories(message_id, cats + [category])

    def remove_category(self, message_id: str, category: str) -> None:
        with self.lock:
            cats = [c for c in self._require(message_id).data.get("categories") or [] if c != category]
        self.set_categories(message_id, cats)

    def move(self, message_id: str, folder: str) -> str:
        """Move to another folder: the regular id changes, the immutable id does not."""
        with self.lock:
            m = self._require(message_id)
            fid = self.folder_id(folder)
            if fid is None:
                raise KeyError("unknown folder")
            before = m.folder_id
            if fid == before:
                return m.rest_id
            self._rest_index.pop(m.rest_id, None)
            m.rest_id = _new_id("AAMkAGI2TG93AAA")
            self._rest_index[m.rest_id] = m.immutable_id
            m.folder_id = fid
            self._changed(m)
            self._record(m, "move", before, fid)
            notes = self._notes_for(m, "deleted", before, only_folder=True) + self._notes_for(m, "created", fid, only_folder=True)
            notes += self._notes_for(m, "updated", fid, only_all=True)
            rest = m.rest_id
        self._post(notes)
        return rest

    def delete(self, message_id: str) -> None:
        """Permanent deletion (delta: `@removed: deleted`)."""
        with self.lock:
            m = self._require(message_id)
            m.deleted = True
            self._rest_index.pop(m.rest_id, None)
            self._record(m, "delete", m.folder_id, None)
            notes = self._notes_for(m, "deleted", m.folder_id)
        self._post(notes)

    def message(self, message_id: str) -> dict[str, Any] | None:
        """The stored message as an ImmutableId client reads it with every field."""
        with self.lock:
            m = self._lookup(message_id)
            return None if m is None else self._render(m, immutable=True, select=None, headers=True)

    def ids_of(self, message_id: str) -> dict[str, str]:
        with self.lock:
            m = self._require(message_id)
            return {"immutable_id": m.immutable_id, "rest_id": m.rest_id, "folder_id": m.folder_id}

    def live_count(self) -> int:
        with self.lock:
            return sum(1 for m in self._messages.values() if not m.deleted)

    def expire_delta_tokens(self, status: int = 410, code: str = "syncStateNotFound") -> int:
        with self.lock:
            n = 0
            for tok in list(self._delta_tokens) + list(self._skip_tokens):
                self._expired[tok] = (status, code)
                n += 1
            self._delta_tokens.clear()
            self._skip_tokens.clear()
            self._rounds.clear()
            return n

    def fail_sends(self, count: int = 1, *, status: int = 500, when: str = "after") -> None:
        """The next `count` sends answer `status` (500/503); "after": once the message is
        in Sent Items (it went out, the client saw an error), "before": untouched."""
        if status not in (500, 502, 503, 504) or when not in ("before", "after"):
            raise ValueError("status must be 5xx and when 'before' or 'after'")
        with self.lock:
            self._send_faults.append([int(count), status, when])

    def attachments(self, message_id: str) -> list[dict[str, Any]]:
        """The message's attachments with their bytes (tests check they arrived whole)."""
        with self.lock:
            return [dict(a) for a in self._require(message_id).data.get("_attachments") or []]

    def sent_count(self) -> int:
        with self.lock:
            return sum(n for _, n in self._sends)

    # ------------------------------------------------------------------ sending

    def _create_draft(self, req: SubRequest) -> SubResponse:
        if not req.raw:
            return _error(400, "ErrorInvalidRequest",
                          "This emulator creates drafts from MIME only (Content-Type: text/plain, base64 MIME).")
        try:
            mime = base64.b64decode(b"".join(req.raw.split()), validate=True)
        except (ValueError, TypeError):
            return _error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
        fields = parse_rfc822(mime)
        fields["isDraft"] = True
        fields["_mime"] = mime
        fields["receivedDateTime"] = _iso(_now())
        iid = self.store_message(fields, "drafts")
        with self.lock:
            return SubResponse(201, {}, self._render(self._require(iid), immutable=_prefers_immutable(req.headers),
                                                     select=None))

    def _create_upload_session(self, req: SubRequest, message_id: str) -> SubResponse:
        body = req.body if isinstance(req.body, dict) else {}
        item = body.get("AttachmentItem") or body.get("attachmentItem")
        if not isinstance(item, dict) or not item.get("name") or not isinstance(item.get("size"), int) or item["size"] <= 0:
            return _error(400, "ErrorInvalidRequest", "AttachmentItem with name and a positive size is required.")
        if str(item.get("attachmentType") or "file").lower() != "file":
            return _error(400, "ErrorInvalidRequest", "Only file attachments can be uploaded.")
        with self.lock:
            m = self._lookup(message_id)
            if m is None:
                return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            if not m.data.get("isDraft"):
                return _error(400, "ErrorInvalidOperation", "Attachments can only be added to a draft.")
            token = secrets.token_urlsafe(24)
            expires = _iso(datetime.fromtimestamp(self.clock() + 6 * 3600, timezone.utc))
            self._uploads[token] = {"message": m.immutable_id, "item": dict(item), "data": bytearray(), "expires": expires}
        return SubResponse(201, {}, {
            "@odata.context": f"{req.base_url}/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": f"{req.base_url}/_upload/{token}",
            "expirationDateTime": expires,
            "nextExpectedRanges": ["0-"],
        })

    def upload_chunk(self, token: str, headers: dict[str, str], chunk: bytes) -> SubResponse:
        if headers.get("authorization"):
            return _error(401, "InvalidAuthenticationToken", "An upload URL is pre-authenticated: send no Authorization header.")
        with self.lock:
            up = self._uploads.get(token)
            if up is None:
                return _error(404, "ErrorItemNotFound", "The upload session was not found or has expired.")
            mm = _CONTENT_RANGE.match(headers.get("content-range", ""))
            if mm is None:
                return _error(400, "ErrorInvalidRequest", "Content-Range header is required: bytes start-end/total.")
            start, end, total = (int(g) for g in mm.groups())
            size = int(up["item"]["size"])
            if total != size:
                return _error(400, "ErrorInvalidRequest", f"Content-Range total {total} differs from the session size {size}.")
            if end < start or end - start + 1 != len(chunk):
                return _error(400, "ErrorInvalidRequest", "Content-Range does not match the body length.")
            if len(chunk) > MAX_CHUNK:
                return _error(413, "RequestEntityTooLarge", "A chunk may be at most 4 MB.")
            if start != len(up["data"]) or end >= size:
                return SubResponse(416, {}, {"error": {"code": "ErrorInvalidRange",
                                                      "message": "The range does not follow the bytes received."},
                                             "nextExpectedRanges": [f"{len(up['data'])}-"]})
            up["data"] += chunk
            if len(up["data"]) < size:
                return SubResponse(200, {}, {"expirationDateTime": up["expires"],
                                             "nextExpectedRanges": [f"{len(up['data'])}-"]})
            del self._uploads[token]
            m = self._lookup(up["message"])
            if m is None:
                return _error(404, "ErrorItemNotFound", "The message of this upload session is gone.")
            item = up["item"]
            att = _attachment(str(item["name"]), str(item.get("contentType") or "application/octet-stream"),
                              bytes(up["data"]), inline=bool(item.get("isInline")), content_id=str(item.get("contentId") or ""))
            att["uploaded"] = True
            m.data.setdefault("_attachments", []).append(att)
            m.data["hasAttachments"] = True
            self._changed(m)
            location = f"/v1.0/me/messages('{m.immutable_id}')/attachments('{att['id']}')"
        return SubResponse(201, {"Location": location}, None)

    def _list_attachments(self, message_id: str) -> SubResponse:
        with self.lock:
            m = self._lookup(message_id)
            if m is None:
                return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            value = [{"@odata.type": "#microsoft.graph.fileAttachment", "id": a["id"], "name": a["name"],
                      "contentType": a["contentType"], "size": a["size"], "isInline": a["isInline"],
                      "contentId": a["contentId"], "contentBytes": base64.b64encode(a["bytes"]).decode("ascii")}
                     for a in m.data.get("_attachments") or []]
        return SubResponse(200, {}, {"value": value})

    def _send(self, req: SubRequest, message_id: str) -> SubResponse:
        with self.lock:
            m = self._lookup(message_id)
            if m is None:
                return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            if not m.data.get("isDraft"):
                return _error(400, "ErrorInvalidOperation", "Only a draft can be sent.")
            addrs = [r["emailAddress"]["address"] for key in ("toRecipients", "ccRecipients", "bccRecipients")
                     for r in m.data.get(key) or []]
            bad = [a for a in addrs if not _ADDRESS.match(a)]
            if not addrs or bad:
                detail = f"Recipient '{bad[0]}' is not resolved." if bad else "A message can't be sent because it contains no recipients."
                return _error(400, "ErrorInvalidRecipients", f"At least one recipient isn't valid., {detail}")
            size = len(m.data.get("_mime") or b"") + sum(a["size"] for a in m.data.get("_attachments") or []
                                                           if a.get("uploaded"))
            if size > self.max_message_bytes:
                return _error(413, "ErrorMessageSizeExceeded",
                              f"The message exceeds the maximum supported size ({size} > {self.max_message_bytes} bytes).")
            now = self.clock()
            while self._sends and self._sends[0][0] <= now - DAY_S:
                self._sends.popleft()
            used = sum(n for _, n in self._sends)
            if used + len(addrs) > self.send_limit_per_day:
                free, wait = used + len(addrs) - self.send_limit_per_day, DAY_S
                for t, n in self._sends:
                    free -= n
                    wait = t + DAY_S - now
                    if free <= 0:
                        break
                self.state.throttled += 1
                return _error(429, "ErrorSubmissionQuotaExceeded",
                              "The sender has exceeded the recipient rate limit for the day.",
                              {"Retry-After": str(max(1, int(wait + 0.999)))})
            fault = None
            for f in self._send_faults:
                if f[0] > 0:
                    f[0] -= 1
                    fault = (f[1], f[2])
                    break
            self._send_faults = [f for f in self._send_faults if f[0] > 0]
            if fault is not None and fault[1] == "before":
                return _error(fault[0], "ErrorInternalServerError", "Injected failure before sending.")
            self._sends.append((now, len(addrs)))
            m.data["isDraft"] = False
            m.data["sentDateTime"] = _iso(_now())
            m.data["receivedDateTime"] = m.data["sentDateTime"]
            if not self.headers_in_sent_items:
                m.data["internetMessageHeaders"] = None
            ident = m.immutable_id
        self.move(ident, "sentitems")
        if fault is not None:
            return _error(fault[0], "ErrorInternalServerError", "Injected failure after sending.")
        return SubResponse(202, {}, None)

    def _folder_messages(self, req: SubRequest, folder: str | None) -> SubResponse:
        """A folder's (or the mailbox's) messages; `$filter` only on internetMessageId."""
        immutable = _prefers_immutable(req.headers)
        wanted: str | None = None
        if req.query.get("$filter"):
            mm = _MSGID_FILTER.match(req.query["$filter"])
            if mm is None:
                return _error(400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
            wanted = mm.group(1).replace("''", "'")
        select = [s.strip() for s in req.query["$select"].split(",") if s.strip()] if req.query.get("$select") else None
        top = int(req.query["$top"]) if req.query.get("$top", "").isdigit() else self.state.default_page_size
        with self.lock:
            fid = None
            if folder is not None:
                fid = self.folder_id(folder)
                if fid is None:
                    return _error(404, "ErrorItemNotFound", "The specified folder could not be found in the store.")
            hits = [m for m in sorted(self._messages.values(), key=lambda m: m.created, reverse=True)
                    if not m.deleted and (fid is None or m.folder_id == fid)
                    and (wanted is None or str(m.data.get("internetMessageId") or "").lower() == wanted.lower())]
            value = [self._render(m, immutable=immutable, select=select) for m in hits[:top]]
        return SubResponse(200, {}, {"@odata.context": f"{req.base_url}/v1.0/$metadata#Collection(message)", "value": value})

    # ------------------------------------------------------------------ internals

    def _require(self, message_id: str) -> _Message:
        m = self._lookup(message_id)
        if m is None:
            raise KeyError("unknown message")
        return m

    def _lookup(self, message_id: str | None) -> _Message | None:
        if not message_id:
            return None
        m = self._messages.get(message_id)
        if m is None:
            imm = self._rest_index.get(message_id)
            m = self._messages.get(imm) if imm else None
        return None if m is None or m.deleted else m

    @staticmethod
    def _changed(m: _Message) -> None:
        m.change_key = _new_change_key()
        m.modified = _now()

    def _record(self, m: _Message, kind: str, before: str | None, after: str | None) -> None:
        self._seq += 1
        self._events.append(_MailEvent(self._seq, kind, m.immutable_id, before, after, self._snapshot(m)))

    @staticmethod
    def _snapshot(m: _Message) -> dict[str, Any]:
        return {
            "immutable_id": m.immutable_id,
            "rest_id": m.rest_id,
            "folder_id": m.folder_id,
            "data": copy.deepcopy(m.data),
            "change_key": m.change_key,
            "created": m.created,
            "modified": m.modified,
        }

    def _render_snapshot(self, snap: dict[str, Any], *, immutable: bool, select: list[str] | None,
                         headers: bool = False) -> dict[str, Any]:
        d = snap["data"]
        out: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.eventMessage" if d.get("_calendar") else "#microsoft.graph.message",
            "@odata.etag": f'W/"{snap["change_key"]}"',
            "id": snap["immutable_id"] if immutable else snap["rest_id"],
            "createdDateTime": _iso(snap["created"]),
            "lastModifiedDateTime": _iso(snap["modified"]),
            "changeKey": snap["change_key"],
            "categories": list(d.get("categories") or []),
            "receivedDateTime": d.get("receivedDateTime"),
            "sentDateTime": d.get("sentDateTime"),
            "hasAttachments": bool(d.get("hasAttachments") or d.get("_attachments")),
            "internetMessageId": d.get("internetMessageId"),
            "subject": d.get("subject") or "",
            "bodyPreview": d.get("bodyPreview") or "",
            "importance": "normal",
            "parentFolderId": snap["folder_id"],
            "conversationId": d.get("conversationId"),
            "isRead": False,
            "isDraft": bool(d.get("isDraft")),
            "webLink": f"https://outlook.office365.com/owa/?ItemID={quote(snap['rest_id'], safe='')}",
            "inferenceClassification": "focused",
            "body": copy.deepcopy(d.get("body") or {"contentType": "text", "content": ""}),
            "sender": copy.deepcopy(d.get("sender")),
            "from": copy.deepcopy(d.get("from")),
            "toRecipients": copy.deepcopy(d.get("toRecipients") or []),
            "ccRecipients": copy.deepcopy(d.get("ccRecipients") or []),
            "bccRecipients": copy.deepcopy(d.get("bccRecipients") or []),
            "replyTo": copy.deepcopy(d.get("replyTo") or []),
            "flag": {"flagStatus": "notFlagged"},
        }
        if d.get("_calendar"):
            out["meetingMessageType"] = "meetingRequest"
        if select is not None:
            wanted = {s.lower() for s in select}
            kept = {k: v for k, v in out.items() if k.lower() in wanted or k in ("id", "@odata.etag", "@odata.type")}
            if "internetmessageheaders" in wanted and d.get("internetMessageHeaders") is not None:
                kept["internetMessageHeaders"] = copy.deepcopy(d["internetMessageHeaders"])
            return kept
        if headers and d.get("internetMessageHeaders") is not None:
            out["internetMessageHeaders"] = copy.deepcopy(d["internetMessageHeaders"])
        return out

    def _render(self, m: _Message, *, immutable: bool, select: list[str] | None, headers: bool = False) -> dict[str, Any]:
        return self._render_snapshot(self._snapshot(m), immutable=immutable, select=select, headers=headers)

    def _folder_json(self, fid: str) -> dict[str, Any]:
        f = self.folders[fid]
        live = [m for m in self._messages.values() if not m.deleted and m.folder_id == fid]
        return {
            "id": fid,
            "displayName": f["displayName"],
            "parentFolderId": f["parentFolderId"],
            "childFolderCount": 0,
            "unreadItemCount": len(live),
            "totalItemCount": len(live),
            "sizeInBytes": sum(len(str(m.data.get("body"))) for m in live),
            "isHidden": False,
        }

    # ------------------------------------------------------------------ notifications

    def _sub_scope(self, resource: str) -> tuple[bool, str | None] | None:
        """(matches all messages, folder id) for a messages resource; None if not one."""
        r = re.sub(r"^users/[^/]+", "me", resource.strip().lstrip("/"), flags=re.IGNORECASE)
        if r.lower() == "me/messages":
            return True, None
        mm = re.fullmatch(r"me/" + _FOLDER_SEG + r"/messages", r, re.IGNORECASE)
        if mm:
            fid = self.folder_id(mm.group(1) or mm.group(2))
            return (False, fid) if fid else None
        return None

    def accepts_resource(self, resource: str) -> bool:
        return self._sub_scope(resource) is not None

    def _notes_for(self, m: _Message, change_type: str, folder_id: str | None, *, only_folder: bool = False,
                   only_all: bool = False) -> list[tuple[str, dict[str, Any]]]:
        if not self.auto_notify:
            return []
        out = []
        for sub in self.state.subscriptions.values():
            scope = self._sub_scope(str(sub.get("resource") or ""))
            if scope is None:
                continue
            everything, fid = scope
            if (everything and only_folder) or (not everything and (only_all or fid != folder_id)):
                continue
            if change_type not in {c.strip() for c in str(sub.get("changeType") or "").split(",")}:
                continue
            out.append((sub["notificationUrl"], self._note(sub, m, change_type)))
        return out

    def _note(self, sub: dict[str, Any], m: _Message, change_type: str) -> dict[str, Any]:
        rid = m.immutable_id if self.state.subscription_immutable.get(sub["id"]) else m.rest_id
        resource = f"Users/{USER_ID}/Messages/{rid}"
        note = {
            "subscriptionId": sub["id"],
            "subscriptionExpirationDateTime": sub["expirationDateTime"],
            "clientState": sub.get("clientState"),
            "changeType": change_type,
            "resource": resource,
            "tenantId": TENANT_ID,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": resource,
                "@odata.etag": f'W/"{m.change_key}"',
                "id": rid,
            },
        }
        self.state.notifications_sent.append(note)
        return note

    def fire_notification(self, subscription_id: str, message_id: str, change_type: str = "updated") -> int:
        """POST one notification about a message now (tests steering it by hand)."""
        with self.lock:
            sub = self.state.subscriptions.get(subscription_id)
            if sub is None:
                raise KeyError("unknown subscription")
            note = self._note(sub, self._require(message_id), change_type)
        return httpx.post(sub["notificationUrl"], json={"value": [note]}, timeout=3.0).status_code

    def _post(self, notes: list[tuple[str, dict[str, Any]]]) -> None:
        """Deliver notifications outside the lock; a receiver that fails is recorded, never raised."""
        for url, note in notes:
            try:
                resp = httpx.post(url, json={"value": [note]}, timeout=3.0)
                if resp.status_code >= 300:
                    self.notification_errors.append(f"{resp.status_code}")
            except httpx.HTTPError as exc:
                self.notification_errors.append(type(exc).__name__)

    # ------------------------------------------------------------------ dispatching

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith("/me/mailFolders") or path.startswith("/me/messages")

    def dispatch(self, req: SubRequest, path: str) -> SubResponse:
        m = req.method.upper()
        if mm := re.fullmatch(r"/me/" + _FOLDER_SEG + r"/messages/delta", path, re.IGNORECASE):
            if m != "GET":
                return _error(405, "ErrorInvalidRequest", "Method not allowed.")
            return self._delta(req, mm.group(1) or mm.group(2))
        if path == "/me/messages/delta":
            return _error(400, "BadRequest", "Change tracking is only supported per mail folder.")
        if path == "/me/mailFolders":
            if m == "GET":
                with self.lock:
                    return SubResponse(200, {}, {
                        "@odata.context": f"{req.base_url}/v1.0/$metadata#users('{USER_ID}')/mailFolders",
                        "value": [self._folder_json(f) for f in self.folders]})
            if m == "POST":
                name = req.body.get("displayName") if isinstance(req.body, dict) else None
                if not name:
                    return _error(400, "ErrorInvalidRequest", "displayName is required.")
                fid = self.add_folder(str(name))
                with self.lock:
                    return SubResponse(201, {}, self._folder_json(fid))
            return _error(405, "ErrorInvalidRequest", "Method not allowed.")
        if mm := re.fullmatch(r"/me/" + _FOLDER_SEG, path, re.IGNORECASE):
            with self.lock:
                fid = self.folder_id(mm.group(1) or mm.group(2))
                if fid is None or m != "GET":
                    return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
                return SubResponse(200, {}, self._folder_json(fid))
        if path == "/me/messages" and m == "POST":
            return self._create_draft(req)
        if path == "/me/messages" and m == "GET":
            return self._folder_messages(req, None)
        if (mm := re.fullmatch(r"/me/" + _FOLDER_SEG + r"/messages", path, re.IGNORECASE)) and m == "GET":
            return self._folder_messages(req, mm.group(1) or mm.group(2))
        if (mm := re.fullmatch(r"/me/messages/([^/]+)/attachments/createUploadSession", path, re.IGNORECASE)) and m == "POST":
            return self._create_upload_session(req, mm.group(1))
        if (mm := re.fullmatch(r"/me/messages/([^/]+)/attachments", path, re.IGNORECASE)) and m == "GET":
            return self._list_attachments(mm.group(1))
        if (mm := re.fullmatch(r"/me/messages/([^/]+)/send", path, re.IGNORECASE)) and m == "POST":
            return self._send(req, mm.group(1))
        if mm := re.fullmatch(r"/me/(?:" + _FOLDER_SEG + r"/)?messages/([^/]+)(?:/(move|permanentDelete))?", path, re.IGNORECASE):
            return self._item(req, mm.group(3), mm.group(4))
        return _error(400, "BadRequest", f"Unsupported request: {m} {path}")

    def _item(self, req: SubRequest, message_id: str, action: str | None) -> SubResponse:
        immutable = _prefers_immutable(req.headers)
        method = req.method.upper()
        with self.lock:
            msg = self._lookup(message_id)
            if msg is None:
                return _error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
            select = [s.strip() for s in req.query["$select"].split(",")] if req.query.get("$select") else None
            if method == "GET" and action is None:
                out = self._render(msg, immutable=immutable, select=select)
                if req.query.get("$expand"):
                    mm = _EXPAND_PROPS.match(req.query["$expand"])
                    if not mm:
                        return _error(400, "BadRequest", "Unsupported $expand.")
                    wanted = [w.lower() for w in re.findall(r"id\s+eq\s+'([^']+)'", mm.group(1), re.IGNORECASE)]
                    props = msg.data.get("_props") or {}
                    hit = [{"id": k, "value": v} for k, v in props.items() if k.lower() in wanted]
                    if hit:
                        out["singleValueExtendedProperties"] = hit
                return SubResponse(200, {}, out)
            body = req.body if isinstance(req.body, dict) else {}
            ident = msg.immutable_id
        if method == "POST" and action and action.lower() == "move":
            try:
                self.move(ident, str(body.get("destinationId") or ""))
            except KeyError:
                return _error(400, "ErrorInvalidIdMalformed", "The destination folder does not exist.")
        elif method == "POST" and action and action.lower() == "permanentdelete":
            self.delete(ident)
            return SubResponse(204, {}, None)
        elif method == "DELETE" and action is None:
            self.move(ident, "deleteditems")  # Graph's DELETE is a move to Deleted Items
            return SubResponse(204, {}, None)
        elif method == "PATCH" and action is None:
            if set(body) - {"categories"}:
                return _error(400, "ErrorInvalidProperty", "Only categories can be changed in this emulator.")
            self.set_categories(ident, list(body.get("categories") or []))
        else:
            return _error(405, "ErrorInvalidRequest", "Method not allowed.")
        with self.lock:
            return SubResponse(201 if action else 200, {}, self._render(self._require(ident), immutable=immutable, select=None))

    # delta ----------------------------------------------------------------------

    def _delta(self, req: SubRequest, folder: str) -> SubResponse:
        q = req.query
        immutable = _prefers_immutable(req.headers)
        st = self.state
        with self.lock:
            scope = self.folder_id(folder)
            if scope is None:
                return _error(404, "ErrorItemNotFound", "The specified folder could not be found in the store.")
            for key in ("$skiptoken", "$deltatoken"):
                tok = q.get(key)
                if tok and tok in self._expired:
                    status, code = self._expired[tok]
                    return _error(status, code, "Sync state generation is not found or has expired. Resync required.")
            if "$skiptoken" in q:
                ref = self._skip_tokens.get(q["$skiptoken"])
                rnd = self._rounds.get(ref[0]) if ref else None
                if ref is None or rnd is None or rnd.scope != scope:
                    return _error(400, "SyncStateInvalid", "Invalid skip token.")
                return self._serve_page(req, ref[0], rnd, ref[1], immutable)
            if "$deltatoken" in q:
                ref = self._delta_tokens.get(q["$deltatoken"])
                if ref is None:
                    return _error(410, "syncStateNotFound", "Sync state generation is not found. Resync required.")
                tscope, since, select, page_size, flt, change_types = ref
                if tscope != scope:
                    return _error(400, "SyncStateInvalid", "Delta token does not belong to this folder.")
                entries = self._changes_since(scope, since)
            else:
                select = [s.strip() for s in q["$select"].split(",") if s.strip()] if q.get("$select") else None
                flt = None
                if q.get("$filter"):
                    mm = _FILTER.match(q["$filter"])
                    try:
                        flt = (mm.group(1).lower(), _parse_iso(mm.group(2))) if mm else None
                    except ValueError:
                        flt = None
                    if flt is None:
                        return _error(400, "ErrorInvalidUrlQueryFilter",
                                      "The query filter contains one or more invalid nodes.")
                change_types = None
                if q.get("changeType"):
                    change_types = {c.strip().lower() for c in q["changeType"].split(",")}
                    if not change_types <= {"created", "updated", "deleted"}:
                        return _error(400, "BadRequest", "Invalid changeType.")
                top = int(q["$top"]) if q.get("$top", "").isdigit() else 0
                page_size = min(_max_page_size(req.headers) or top or st.default_page_size, st.max_page_size)
                since = 0
                entries = [
                    {"kind": "item", "change": "created", "snap": self._snapshot(m)}
                    for m in sorted(self._messages.values(), key=lambda m: m.created)
                    if not m.deleted and m.folder_id == scope
                ]
            entries = [e for e in entries if self._passes(e, flt, change_types)]
            entries = st._add_replays(entries)
            pages = [entries[i : i + page_size] for i in range(0, len(entries), page_size)] or [[]]
            for _ in range(st.delta_empty_pages):
                pages.insert(min(1, len(pages)), [])
            round_id = secrets.token_urlsafe(12)
            rnd = _MailRound(scope, pages, self._seq, select, page_size, flt, change_types)
            self._rounds[round_id] = rnd
            return self._serve_page(req, round_id, rnd, 0, immutable)

    @staticmethod
    def _passes(entry: dict, flt: tuple[str, datetime] | None, change_types: set[str] | None) -> bool:
        if change_types is not None and entry["change"] not in change_types:
            return False
        if flt is None or entry["kind"] != "item":
            return True
        received = entry["snap"]["data"].get("receivedDateTime")
        if not received:
            return False
        when = _parse_iso(received)
        return when >= flt[1] if flt[0] == "ge" else when > flt[1]

    def _changes_since(self, scope: str, since: int) -> list[dict]:
        events = [e for e in self._events if e.seq > since and scope in (e.folder_before, e.folder_after)]
        if not self.state.coalesce:
            return [self._entry_for(e, scope, since) for e in events]
        last: dict[str, _MailEvent] = {}
        for e in events:
            last.pop(e.immutable_id, None)
            last[e.immutable_id] = e
        out = []
        for iid, e in last.items():
            m = self._messages[iid]
            if not m.deleted and m.folder_id == scope:
                new_here = any(x.immutable_id == iid and x.folder_after == scope and x.folder_before != scope
                               for x in events)
                out.append({"kind": "item", "change": "created" if new_here else "updated", "snap": self._snapshot(m)})
            else:
                out.append(self._entry_for(e, scope, since))
        return out

    @staticmethod
    def _entry_for(e: _MailEvent, scope: str, since: int) -> dict:
        if e.kind == "delete":
            return {"kind": "removed", "reason": "deleted", "change": "deleted", "snap": e.snapshot}
        if e.folder_after != scope:
            return {"kind": "removed", "reason": "changed", "change": "deleted", "snap": e.snapshot}
        change = "created" if e.kind in ("create", "move") else "updated"
        return {"kind": "item", "change": change, "snap": e.snapshot}

    def _serve_page(self, req: SubRequest, round_id: str, rnd: _MailRound, index: int, immutable: bool) -> SubResponse:
        page = rnd.pages[index] if index < len(rnd.pages) else []
        value = []
        for entry in page:
            snap = entry["snap"]
            if entry["kind"] == "removed":
                rid = snap["immutable_id"] if immutable else snap["rest_id"]
                value.append({"@odata.type": "#microsoft.graph.message", "id": rid, "@removed": {"reason": entry["reason"]}})
            else:
                value.append(self._render_snapshot(snap, immutable=immutable, select=rnd.select))
        link_path = f"/v1.0/me/mailFolders('{quote(rnd.scope, safe='')}')/messages/delta"
        out: dict[str, Any] = {"@odata.context": f"{req.base_url}/v1.0/$metadata#Collection(message)", "value": value}
        tok = secrets.token_urlsafe(24)
        if index + 1 < len(rnd.pages):
            self._skip_tokens[tok] = (round_id, index + 1)
            out["@odata.nextLink"] = f"{req.base_url}{link_path}?$skiptoken={tok}"
        else:
            self._delta_tokens[tok] = (rnd.scope, rnd.end_seq, rnd.select, rnd.page_size, rnd.flt, rnd.change_types)
            out["@odata.deltaLink"] = f"{req.base_url}{link_path}?$deltatoken={tok}"
        headers = {}
        if rnd.page_size != self.state.default_page_size:
            headers["Preference-Applied"] = f"odata.maxpagesize={rnd.page_size}"
        return SubResponse(200, headers, out)
