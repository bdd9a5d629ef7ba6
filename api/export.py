"""GET /admin/export: a connection's or organisation's synced data and audit log, streamed.

Authenticated like the app's other admin routes (`Authorization: Bearer <admin token>`,
compared in constant time); without a configured token the route answers 404, as if it
did not exist. `?connection=CONN` or `?org=ORG`, and `format=json` (default) or `csv`.
The body is a generator over the store (store/export.py): never built whole in memory.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from store import export

MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8"}


def _bearer(request: Request) -> str:
    scheme, _, credential = (request.headers.get("authorization") or "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def export_router(sessions, admin_token: str | None) -> APIRouter:
    router = APIRouter(prefix="/admin")

    @router.get("/export")
    def export_data(request: Request, connection: str | None = None, org: str | None = None,
                    format: str = "json") -> Response:
        if admin_token is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if not hmac.compare_digest(_bearer(request).encode(), admin_token.encode()):
            return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if (connection is None) == (org is None):
            return JSONResponse({"error": "bad_request", "detail": "give connection or org"}, status_code=400)
        if format not in MEDIA:
            return JSONResponse({"error": "bad_request", "detail": "format is csv or json"}, status_code=400)
        scope = export.Scope(connection_id=connection, org_id=org)
        if not export.exists(sessions, scope):
            return JSONResponse({"error": "not_found"}, status_code=404)
        name = f"concord-{'connection' if connection else 'org'}-export.{format}"
        return StreamingResponse(export.chunks(sessions, scope, format), media_type=MEDIA[format],
                                 headers={"Content-Disposition": f'attachment; filename="{name}"',
                                          "Cache-Control": "no-store"})

    return router
