"""JSON answers that cannot fail on what a client stored.

Starlette encodes JSON as UTF-8, which raises on a lone surrogate (a JSON body may
carry "\\ud800" and Python decodes it to one), so an emulator holding such a value
answered 500 to every later read of it. PROVIDERS.md says nothing about how Google
or Microsoft treat lone surrogates, so the emulators keep what a JSON round trip
allows: they store the value and send it back escaped.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class EscapedJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped (valid JSON, and always encodable)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
