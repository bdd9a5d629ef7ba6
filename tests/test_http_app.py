"""The deployed HTTP app (api.app.production_app) as an operator runs it: `concord api`
in its own process, configured from the environment, with uvicorn's real access log.

Every secret is made here, per test."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.app import ConfigError, production_app
from emulators.server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """A complete configuration, minus what `overrides` sets to None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env.update(
        CONCORD_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}",
        CONCORD_VAULT_KEYS="k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        CONCORD_CONNECT_KEY=secrets.token_hex(32),
        CONCORD_PLATFORM_WEBHOOK_KEY=secrets.token_hex(32),
        CONCORD_ADMIN_TOKEN=secrets.token_urlsafe(24),
        CONCORD_GOOGLE_CLIENT_ID="concord-test-client",
        CONCORD_GOOGLE_CLIENT_SECRET=secrets.token_urlsafe(16),
        CONCORD_TEMPORAL=f"127.0.0.1:{free_port()}",  # never reached in these tests
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _concord_api(env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "api", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("overrides, names", [
    ({"CONCORD_VAULT_KEYS": None}, "CONCORD_VAULT_KEYS"),
    ({"CONCORD_VAULT_KEYS": "k1:not-base64!"}, "CONCORD_VAULT_KEYS"),
    ({"CONCORD_CONNECT_KEY": None}, "CONCORD_CONNECT_KEY"),
])
def test_concord_api_refuses_to_start_without_its_secrets(tmp_path, overrides, names):
    """One clear line and a non-zero exit; no traceback, no throwaway key, no server."""
    port = free_port()
    proc = _concord_api(_env(tmp_path, **overrides), port)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("concord api started although a secret is missing")
    assert proc.returncode == 1
    assert err.strip().splitlines() == [err.strip()], err  # one line
    assert err.startswith("concord api: ") and names in err and "Traceback" not in err
    assert out == ""
    assert not (tmp_path / "store.db").exists()  # refused before touching the store


@pytest.mark.parametrize("overrides, names", [
    ({"CONCORD_CONNECT_KEY": "zz"}, "CONCORD_CONNECT_KEY is not hex"),
    ({"CONCORD_PLATFORM_WEBHOOK_KEY": "00ff"}, "CONCORD_PLATFORM_WEBHOOK_KEY must be at least 16 bytes"),
    ({"CONCORD_ADMIN_TOKEN": "short"}, "CONCORD_ADMIN_TOKEN must be at least 16"),
    ({"CONCORD_PUBSUB_AUDIENCE": "https://concord.example/webhooks/gmail"}, "go together"),
])
def test_misconfiguration_is_a_config_error(tmp_path, monkeypatch, overrides, names):
    for key, value in _env(tmp_path, **overrides).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        production_app()
    assert names in str(err.value.code) and isinstance(err.value, SystemExit)


def test_access_log_keeps_secrets_in_urls_out(tmp_path):
    """uvicorn logs every request line with its query string: the push token of an old
    Pub/Sub endpoint, the OAuth callback's code and state, Graph's validation token and a
    connect link's sig are replaced in the real access log of `concord api`."""
    port = free_port()
    proc = _concord_api(_env(tmp_path), port)
    marks = {name: f"SECRET{name.upper()}{secrets.token_hex(8)}" for name in
             ("token", "code", "state", "validation", "sig", "encoded")}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=10) as http:
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    http.get("/webhooks/stats")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "concord api did not start"
                    time.sleep(0.1)
            http.post("/webhooks/gmail", params={"token": marks["token"]}, json={})
            http.get("/connect/google/callback", params={"code": marks["code"], "state": marks["state"]})
            r = http.post("/webhooks/graph", params={"validationToken": marks["validation"]})
            assert r.text == marks["validation"]  # the app still sees (and echoes) the value
            http.get("/connect/google/start", params={"org_id": "o", "user_id": "u", "exp": "1", "sig": marks["sig"]})
            http.get(f"/webhooks/stats?%74oken={marks['encoded']}")  # a percent-encoded name is the same parameter
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    log = out + err
    for value in marks.values():
        assert value not in log
    assert '"GET /connect/google/callback?code=[redacted]&state=[redacted] HTTP/1.1" 400' in log
    assert '"POST /webhooks/gmail?token=[redacted] HTTP/1.1" 403' in log
    assert '"POST /webhooks/graph?validationToken=[redacted] HTTP/1.1" 200' in log
    assert "exp=1&sig=[redacted]" in log and "%74oken=[redacted]" in log


def test_healthz_answers_when_the_store_does(tmp_path, monkeypatch):
    """GET /healthz on the deployed app: 200 while the store answers, 503 (no details) when it does not."""
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from api.app import create_app
    from api.health import health_router

    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    with TestClient(production_app()) as http:
        r = http.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})

    dead = sessionmaker(create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none",
                                      connect_args={"connect_timeout": 2}))
    with TestClient(create_app([health_router(dead)])) as http:
        r = http.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "unavailable", "store": "unreachable"}
