"""GET /healthz: a cheap liveness and readiness probe for load balancers and healthchecks.

200 `{"status": "ok"}` when the store answers `SELECT 1`; 503 with the reason otherwise.
Temporal is not asked: the app signals it lazily and a webhook is accepted (202) before
any signal, so a Temporal outage does not make the HTTP app unable to take requests.
No secret, no row count, no configuration is ever shown.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

log = logging.getLogger("concord.api.health")


def health_router(sessions) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:  # sync: FastAPI runs it on its thread pool
        try:
            with sessions() as s:
                s.execute(sa.text("SELECT 1"))
        except Exception as exc:  # any failure to reach the store makes us unready
            log.warning("healthz: store unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "unavailable", "store": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return router
