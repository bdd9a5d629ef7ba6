"""Malformed mail, the way it arrives in real mailboxes, for the fuzz tests.

Each corruption is one a parser meets in the wild: undeclared or unknown charsets,
8-bit bytes in headers, broken base64 and quoted-printable, multipart without its
boundary, parts nested hundreds deep, missing or duplicated Message-ID / Date /
From, NULs, a truncated message, header lines of megabytes, garbage. `corrupt`
applies one or several to a well-formed message, deterministically from a seed.
"""

from __future__ import annotations

import random
from typing import Callable

from hypothesis import strategies as st

KNOWN = b"pat@prospect.example"


def base_message(rng: random.Random, i: int) -> bytes:
    subject = rng.choice([b"Quote", b"Re: Quote", b"=?utf-8?b?UXVvdGUg4pyT?=", b"=?bogus?q?x?=", b""])
    return (b"From: Pat <" + KNOWN + b">\r\n"
            b"To: ann@acme.example\r\n"
            b"Subject: " + subject + b"\r\n"
            b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            b"Message-ID: <fuzz-" + str(i).encode() + b"@prospect.example>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            b"Hello " + str(i).encode() + b"\r\n")


def _drop_header(name: bytes) -> Callable[[bytes, random.Random], bytes]:
    def f(raw: bytes, rng: random.Random) -> bytes:
        lines = raw.split(b"\r\n")
        return b"\r\n".join(line for line in lines if not line.lower().startswith(name.lower() + b":"))
    return f


def _header_8bit(raw: bytes, rng: random.Random) -> bytes:
    return raw.replace(b"Subject: ", b"Subject: \xe9t\xe9 \xff\xfe ", 1)


def _bad_charset(raw: bytes, rng: random.Random) -> bytes:
    cs = rng.choice([b"x-unknown", b"utf-7", b"\"\"", b"iso-8859-99", b"utf-8\x00"])
    return raw.replace(b"charset=utf-8", b"charset=" + cs, 1) + b"\xff\xfe\xfd caf\xe9\r\n"


def _broken_base64(raw: bytes, rng: random.Random) -> bytes:
    head, _, _ = raw.partition(b"\r\n\r\n")
    return head + b"\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8=?!*&^%$#\r\nnot base64 at all===\r\n"


def _broken_qp(raw: bytes, rng: random.Random) -> bytes:
    head, _, _ = raw.partition(b"\r\n\r\n")
    return head + b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=4=\r\n=E9=\r\n"


def _no_boundary(raw: bytes, rng: random.Random) -> bytes:
    return raw.replace(b"Content-Type: text/plain; charset=utf-8",
                       b"Content-Type: multipart/mixed", 1) + b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n"


def _deep_nesting(raw: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([50, 200, 600])
    head, _, _ = raw.partition(b"\r\n\r\n")
    head = head.replace(b"Content-Type: text/plain; charset=utf-8", b"Content-Type: multipart/mixed; boundary=b0")
    body = b""
    for d in range(depth):
        body += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (d, d + 1)
    body += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth
    return head + b"\r\n\r\n" + body


def _nuls(raw: bytes, rng: random.Random) -> bytes:
    return raw.replace(b"Hello", b"He\x00llo\x00", 1).replace(b"Subject: ", b"Subject: a\x00b", 1)


def _truncate(raw: bytes, rng: random.Random) -> bytes:
    return raw[: rng.randint(1, max(1, len(raw) - 1))]


def _huge_header(raw: bytes, rng: random.Random) -> bytes:
    return raw.replace(b"To: ", b"To: " + b", ".join(b"x%d@y.example" % k for k in range(5000)) + b", ", 1)


def _dup_headers(raw: bytes, rng: random.Random) -> bytes:
    return raw.replace(b"Message-ID:", b"Message-ID: <dup@x>\r\nMessage-ID:", 1).replace(
        b"From:", b"From: other@x\r\nFrom:", 1)


def _bad_addresses(raw: bytes, rng: random.Random) -> bytes:
    return raw.replace(b"To: ann@acme.example", b"To: \"unterminated <@@>, ;;; <>, a@, @b, \xff@\xfe", 1)


def _bad_date(raw: bytes, rng: random.Random) -> bytes:
    return raw.replace(b"Mon, 30 Nov 2026 10:00:00 +0000", rng.choice([b"yesterday", b"99 Foo 99999 99:99", b""]), 1)


def _garbage(raw: bytes, rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))


def _attachment_mess(raw: bytes, rng: random.Random) -> bytes:
    head, _, _ = raw.partition(b"\r\n\r\n")
    head = head.replace(b"Content-Type: text/plain; charset=utf-8", b"Content-Type: multipart/mixed; boundary=zz")
    return head + (b"\r\n\r\n--zz\r\nContent-Type: text/html; charset=klingon\r\n\r\n<p>hi<b></p>\r\n"
                   b"--zz\r\nContent-Type: application/pdf; name==?utf-8?q?=FF=FE?=\r\n"
                   b"Content-Disposition: attachment; filename*=bogus''%ZZ\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n"
                   b"--zz\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\n--zz--\r\n")


CORRUPTIONS: tuple[Callable[[bytes, random.Random], bytes], ...] = (
    _drop_header(b"Message-ID"), _drop_header(b"Date"), _drop_header(b"From"), _header_8bit, _bad_charset,
    _broken_base64, _broken_qp, _no_boundary, _deep_nesting, _nuls, _truncate, _huge_header, _dup_headers,
    _bad_addresses, _bad_date, _garbage, _attachment_mess,
)


def corrupt(seed: int) -> bytes:
    rng = random.Random(seed)
    raw = base_message(rng, seed)
    for f in rng.sample(CORRUPTIONS, rng.randint(1, 3)):
        raw = f(raw, rng)
    return raw


def malformed_messages() -> st.SearchStrategy[bytes]:
    """Hypothesis: a corrupted message, or arbitrary bytes spliced into a good one."""
    seeded = st.integers(min_value=0, max_value=2**32 - 1).map(corrupt)
    spliced = st.tuples(st.integers(0, 10_000), st.binary(max_size=300), st.integers(0, 400)).map(
        lambda t: (lambda raw: raw[:t[2]] + t[1] + raw[t[2]:])(base_message(random.Random(t[0]), t[0])))
    return st.one_of(seeded, spliced, st.binary(max_size=2000))
