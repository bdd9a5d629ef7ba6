"""Google's batch format, as google-api-python-client speaks it (PROVIDERS.md section 0):
multipart/mixed in, each part an HTTP request; multipart/mixed out, each part's
Content-ID `<response-...>` (its " + " kept) and a status line with a reason phrase.

The Gmail and Calendar emulators serve it over their own dispatch; what a part does is
theirs, the envelope is this module's.
"""

from __future__ import annotations

import email.parser
import json
import secrets
from email import policy as email_policy
from typing import Callable
from urllib.parse import parse_qs, urlsplit

REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 409: "Conflict", 410: "Gone", 412: "Precondition Failed", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}

#: (method, path, query, lower-cased headers, body) -> (status, JSON body, extra headers)
Dispatch = Callable[[str, str, dict, dict, bytes], tuple[int, dict, dict]]


class BatchRefused(Exception):
    """The envelope itself is refused (not multipart, too many parts): one 400 for all."""


def batch_parts(content_type: str, body: bytes, max_parts: int) -> list:
    parser = email.parser.BytesFeedParser(policy=email_policy.compat32)
    parser.feed(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    outer = parser.close()
    if not outer.is_multipart():
        raise BatchRefused("Invalid batch request: expected multipart/mixed")
    parts = outer.get_payload()
    if len(parts) > max_parts:
        raise BatchRefused(f"Too many requests in batch: at most {max_parts} are allowed.")
    return parts


def serve_parts(parts: list, outer_auth: str, dispatch: Dispatch, *, invalid: Callable[[], dict],
                on_payload: Callable[[bytes], None] = lambda _p: None) -> tuple[bytes, str]:
    """Each part dispatched on its own (the outer Authorization when it has none); the
    multipart answer and its content type."""
    boundary = "batch_" + secrets.token_hex(12)
    chunks: list[bytes] = []
    for part in parts:
        # a long Content-ID arrives folded over two lines: unfold it (" + " must survive)
        content_id = " ".join(str(part.get("Content-ID") or "").split())
        inner = part.get_payload(decode=False)
        if isinstance(inner, list):
            inner = inner[0].as_string()
        head, _, inner_body = str(inner).replace("\r\n", "\n").partition("\n\n")
        lines = head.split("\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            status, result, headers = 400, invalid(), {}
        else:
            inner_headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                inner_headers[k.strip().lower()] = v.strip()
            if "authorization" not in inner_headers and outer_auth:
                inner_headers["authorization"] = outer_auth
            url = urlsplit(target)
            status, result, headers = dispatch(method, url.path, parse_qs(url.query, keep_blank_values=True),
                                               inner_headers, inner_body.encode("utf-8") if inner_body.strip() else b"")
        payload = b"" if status == 204 else json.dumps(result, ensure_ascii=True).encode()
        on_payload(payload)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        chunks.append(
            (f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-{content_id.strip('<>')}>\r\n\r\n"
             f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json; charset=UTF-8\r\n"
             f"{extra}Content-Length: {len(payload)}\r\n\r\n").encode() + payload + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/mixed; boundary={boundary}"
