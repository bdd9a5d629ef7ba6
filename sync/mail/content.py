"""Reading a message: RFC 5322 / MIME into the canonical `MailMessage`, never raising.

Mail in the wild is malformed: undeclared or wrong charsets, headers that do not
parse, missing Message-IDs and Dates, nested parts a hundred deep, bodies of tens of
megabytes. A parser that raises takes the whole batch down with it, so every reader
here answers a `MailMessage`; what could not be read is named in `problems` (value-free
codes) and the rules decide whether the message is still logged or quarantined.

Parsing is the stdlib `email` package with `policy.default`; HTML becomes text with
html2text. Metadata-only mode (`bodies=False`) never decodes a body part: only the
structure (attachment names and sizes, calendar parts) is walked.
"""

from __future__ import annotations

import email
import hashlib
from email import policy as email_policy
from email.message import EmailMessage, Message
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from typing import Iterable, Sequence

from models.mail import Address, Attachment, MailMessage, normalize_message_id
from sync.mail.threads import synthesize_message_id

#: headers metadata-only fetches ask for (Gmail `metadataHeaders`, Graph internetMessageHeaders)
METADATA_HEADERS: tuple[str, ...] = (
    "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
    "List-Unsubscribe", "Precedence", "Auto-Submitted", "Content-Type",
)

#: a MIME tree deeper than this is not walked further (a crafted message can nest thousands)
MAX_DEPTH = 30
#: and no more parts than this are looked at
MAX_PARTS = 500
#: text kept per message, after conversion
MAX_TEXT_CHARS = 200_000
#: addresses kept per header (a mailing to thousands is bulk anyway)
MAX_ADDRESSES = 200
#: characters of one header value read; a header of megabytes is cut, and says so
MAX_HEADER_CHARS = 32_768


def html_to_text(html: str) -> str:
    """Readable text from an HTML body: links kept as text, images and styles dropped."""
    import html2text

    conv = html2text.HTML2Text()
    conv.ignore_images = True
    conv.ignore_emphasis = True
    conv.body_width = 0
    conv.unicode_snob = True
    try:
        return conv.handle(html).strip()
    except Exception:  # html2text is lenient; a pathological input still must not raise
        return ""


def _clean(text: str, problems: set[str] | None = None, code: str = "bad_header_bytes") -> str:
    """Undecodable bytes (kept by the parser as surrogates) become U+FFFD, so what is
    staged is valid text; the message says it had them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        if problems is not None:
            problems.add(code)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode(
            "utf-8", "replace").decode("utf-8")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words to text; what does not decode is kept as it came."""
    if "=?" not in value:
        return value
    try:
        return _clean(str(make_header(decode_header(value))))
    except Exception:
        return value


def _addresses(values: Iterable[str], problems: set[str]) -> tuple[Address, ...]:
    """Addresses of a raw header value: split first, then each display name decoded, so
    an encoded name holding a comma stays one name."""
    out: list[Address] = []
    try:
        pairs = getaddresses([str(v) for v in values if v])
    except Exception:
        problems.add("bad_address_header")
        return ()
    for name, addr in pairs[:MAX_ADDRESSES]:
        addr = (addr or "").strip()
        if "@" not in addr:
            if addr or name:
                problems.add("bad_address")
            continue
        out.append(Address(email=addr, name=decode_words((name or "").strip())))
    return tuple(out)


def _header(get, name: str, problems: set[str]) -> str:
    try:
        value = get(name)
    except Exception:
        problems.add(f"bad_header:{name.lower()}")
        return ""
    if value is None:
        return ""
    try:
        text = _clean(str(value), problems)
        if len(text) > MAX_HEADER_CHARS:
            problems.add(f"long_header:{name.lower()}")
            text = text[:MAX_HEADER_CHARS]
        return " ".join(text.split())
    except Exception:
        problems.add(f"bad_header:{name.lower()}")
        return ""


def _date(value: str, problems: set[str]) -> float | None:
    if not value:
        problems.add("missing_date")
        return None
    try:
        dt = parsedate_to_datetime(value)
        return dt.timestamp()
    except Exception:
        problems.add("bad_date")
        return None


def from_header_getter(get, *, size: int = 0, problems: set[str] | None = None) -> MailMessage:
    """The header-level fields, from any `get(name) -> str | None`: a parsed message,
    Gmail's metadata headers or Graph's internetMessageHeaders."""
    problems = problems if problems is not None else set()
    h = {n: _header(get, n, problems) for n in METADATA_HEADERS}
    for n in ("Subject", "Message-ID", "In-Reply-To", "References", "Date", "Precedence", "Auto-Submitted"):
        h[n] = decode_words(h[n])
    senders = _addresses([h["From"]], problems)
    to = _addresses([h["To"]], problems)
    cc = _addresses([h["Cc"]], problems)
    bcc = _addresses([h["Bcc"]], problems)
    mid = normalize_message_id(h["Message-ID"].split()[0] if h["Message-ID"] else "")
    sent_at = _date(h["Date"], problems)
    synthesized = False
    if not mid or "@" not in mid:
        # Flagged, and derived from what every mailbox's copy shares, so copies still agree.
        problems.add("missing_message_id" if not mid else "bad_message_id")
        mid = synthesize_message_id(sender=senders[0].email if senders else "", date=sent_at, subject=h["Subject"],
                                    to=[a.email for a in to + cc])
        synthesized = True
    if not senders:
        problems.add("missing_from")
    content_type = h["Content-Type"].lower()
    return MailMessage(
        message_id=mid,
        synthesized_id=synthesized,
        in_reply_to=h["In-Reply-To"],
        references=h["References"],
        subject=h["Subject"][:2000],
        sender=senders[0] if senders else None,
        to=to,
        cc=cc,
        bcc=bcc,
        sent_at=sent_at,
        list_unsubscribe=bool(h["List-Unsubscribe"]),
        precedence=h["Precedence"].lower(),
        auto_submitted=h["Auto-Submitted"].lower(),
        calendar_invite="text/calendar" in content_type,
        size=size,
        problems=tuple(sorted(problems)),
    )


def from_headers(headers: Sequence[tuple[str, str]], *, size: int = 0) -> MailMessage:
    """Metadata-only: a message from its header list alone (first value of each name wins)."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(str(name).lower(), str(value) if value is not None else "")
    return from_header_getter(lambda n: first.get(n.lower()), size=size)


def _walk(msg: Message, depth: int = 0, seen: list[int] | None = None) -> Iterable[Message]:
    seen = seen if seen is not None else [0]
    if depth > MAX_DEPTH or seen[0] >= MAX_PARTS:
        return
    seen[0] += 1
    yield msg
    if msg.is_multipart():
        payload = msg.get_payload()
        if isinstance(payload, list):
            for part in payload:
                if isinstance(part, Message):
                    yield from _walk(part, depth + 1, seen)


def _part_text(part: Message, problems: set[str]) -> str:
    try:
        if isinstance(part, EmailMessage):
            return str(part.get_content())
    except (LookupError, UnicodeError):
        problems.add("bad_charset")
    except Exception:
        problems.add("bad_body")
    raw = part.get_payload(decode=True) or b""
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def parse_raw(raw: bytes, *, bodies: bool, max_body_bytes: int = 2_000_000) -> MailMessage:
    """A whole RFC 5322 message. Never raises; see the module docstring."""
    problems: set[str] = set()
    size = len(raw)
    try:
        msg = email.message_from_bytes(raw, policy=email_policy.default)
    except Exception:
        return MailMessage(message_id=synthesize_message_id(sender="", date=None, subject="",
                                                            provider_hint=hashlib.sha256(raw).hexdigest()),
                           synthesized_id=True, size=size, problems=("unparseable",))
    if getattr(msg, "defects", None):
        problems.add("mime_defects")
    # Header values as they came (raw_items parses nothing): the default policy would
    # build a structured header per read, which costs seconds on a To of thousands.
    raw_headers: dict[str, str] = {}
    try:
        for name, value in msg.raw_items():
            raw_headers.setdefault(str(name).lower(), value if isinstance(value, str) else str(value))
    except Exception:
        problems.add("bad_headers")
    base = from_header_getter(lambda n: raw_headers.get(n.lower()), size=size, problems=problems)
    attachments: list[Attachment] = []
    calendar = base.calendar_invite
    plain: list[str] = []
    html: list[str] = []
    try:
        parts = list(_walk(msg))
    except Exception:
        problems.add("bad_structure")
        parts = []
    if len(parts) >= MAX_PARTS:
        problems.add("too_many_parts")
    for part in parts:
        try:
            ctype = part.get_content_type()
            disposition = (part.get_content_disposition() or "").lower()
            filename = part.get_filename()
        except Exception:
            problems.add("bad_part_header")
            continue
        if ctype == "text/calendar":
            calendar = True
        if part.is_multipart():
            continue
        if filename or disposition == "attachment":
            try:
                payload = part.get_payload(decode=True) or b""
            except Exception:
                payload = b""
            attachments.append(Attachment(filename=_clean(str(filename or ""), problems, "bad_filename")[:255], size=len(payload),
                                          content_type=_clean(ctype, problems, "bad_part_header")))
            continue
        if not bodies:
            continue
        if size > max_body_bytes:
            problems.add("too_large")
            continue
        if ctype == "text/plain":
            plain.append(_part_text(part, problems))
        elif ctype == "text/html":
            html.append(_part_text(part, problems))
    body: str | None = None
    if bodies and "too_large" not in problems:
        body = "\n\n".join(t for t in plain if t.strip()) or html_to_text("\n".join(html)) if (plain or html) else ""
        body = _clean((body or "").replace("\x00", ""), problems, "bad_body_bytes")[:MAX_TEXT_CHARS]
    return base.model_copy(update={
        "attachments": tuple(attachments),
        "calendar_invite": calendar,
        "body_text": body,
        "problems": tuple(sorted(problems)),
    })
