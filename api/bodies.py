"""Reading request bodies with a ceiling.

Starlette's `request.body()` reads everything before anyone can look at the size,
and a chunked upload declares none: 64 MB sent chunked grew the server by 45 MB
before the old 1 MiB check ran. `read_body` refuses a declared length over the
limit at once and otherwise counts the stream as it arrives, stopping at the
first chunk past the limit. The 413 must carry `Connection: close`
(`CLOSE_CONNECTION`): uvicorn then closes the socket after the answer, where it
would otherwise keep reading (and discarding) the rest of the upload to reuse
the connection.
"""

from __future__ import annotations

from starlette.requests import Request


#: Headers for the 413 answer: stop the upload, do not drain it.
CLOSE_CONNECTION = {"Connection": "close"}


class BodyTooLarge(Exception):
    """More than the route accepts: answer 413."""


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 15 or int(declared) > limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
