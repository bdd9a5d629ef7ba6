"""Connecting mailboxes through api/connect.py, end to end over real HTTP.

The router runs on a real port; a browser (httpx) follows the consent redirect of
the OAuth emulators (TLS, certificate made at test time: msal and oauthlib refuse
plain http); the callback stores the connection and sealed tokens. Then the
mailbox connectors built by workers/mailboxes.py call the People / Graph emulators
with the tokens the OAuth emulator issued, refreshing through the vault.
"""

from __future__ import annotations

import html
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from activities.pipeline import ConnectionInfo
from api.app import signed_start_authorizer, start_link
from api.connect import ConnectDeps, Connected, connect_router
from models.errors import ReauthRequired
from emulators import google_people as people_emu
from emulators import graph as graph_emu
from emulators.oauth import OAuthState, google_app, make_self_signed_cert, microsoft_app
from emulators.server import free_port, serve
from store import repo
from store.db import make_engine, migrate, session_factory
from store.pending_flows import StorePendingFlows, state_key
from store.schema import pending_oauth
from store.vault import KeyRing, TokenVault, generate_key
from connectors.credentials import ProviderConfig
from workers.mailboxes import MailboxBuilder

CLIENT_ID, CLIENT_SECRET = "concord-app", "app-secret"
ORG, USER_ID = "org-1", "user-1"
ADA = "ada@example.test"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@dataclass
class Rig:
    api: str
    sessions: object
    vault: TokenVault
    google: OAuthState
    microsoft: OAuthState
    people: people_emu.PeopleState
    graph: graph_emu.GraphState
    providers: ProviderConfig
    db_path: Path
    tls: tuple[str, str]
    started: list[Connected] = field(default_factory=list)
    signalled: list[tuple[str, str]] = field(default_factory=list)
    servers: list = field(default_factory=list)

    def browser(self) -> httpx.Client:
        return httpx.Client(verify=self.tls[0], trust_env=False, timeout=10)

    def connect(self, provider: str, *, org: str = ORG, user: str = USER_ID) -> httpx.Response:
        """What a user's browser does: start, consent (auto-approved), land on the callback."""
        with self.browser() as b:
            r = b.get(f"{self.api}connect/{provider}/start", params={"org_id": org, "user_id": user})
            assert r.status_code == 302, r.text
            assert r.headers["location"].startswith(self.providers.google_auth_uri if provider == "google"
                                                    else self.providers.ms_authority)
            r = b.get(r.headers["location"])
            if r.status_code == 302:  # Google: redirect with ?code=&state=
                return b.get(r.headers["location"])
            # Microsoft: response_mode=form_post, the page auto-submits a form to our callback
            action = html.unescape(re.search(r'action="([^"]+)"', r.text).group(1))
            fields = {html.unescape(k): html.unescape(v) for k, v in re.findall(r'name="([^"]*)" value="([^"]*)"', r.text)}
            return b.post(action, data=fields)

    def connection(self, cid: str):
        with self.sessions.begin() as s:
            return repo.get_connection(s, cid)

    def info(self, cid: str) -> ConnectionInfo:
        c = self.connection(cid)
        return ConnectionInfo(c.id, c.org_id, c.user_id, c.provider, c.account_ref, dict(c.settings))

    def stored_bytes(self) -> bytes:
        """Everything SQLite wrote, database and WAL, for plaintext checks."""
        out = b""
        for suffix in ("", "-wal"):
            p = Path(str(self.db_path) + suffix)
            if p.exists():
                out += p.read_bytes()
        return out


@pytest.fixture
def rig(tmp_path, tls):
    db_path = tmp_path / "store.db"
    url = f"sqlite:///{db_path}"
    migrate(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    vault = TokenVault(engine, KeyRing.parse("k1:" + generate_key()))
    with sessions.begin() as s:
        repo.create_org(s, ORG, "Org one")

    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}/"
    servers = []

    g = OAuthState(provider="google", rotate_refresh_tokens=True)
    g.register_client(CLIENT_ID, CLIENT_SECRET, [api + "connect/google/callback"])
    g.add_user(ADA, "Ada")
    ms = OAuthState(provider="microsoft")
    ms.register_client(CLIENT_ID, CLIENT_SECRET, [api + "connect/microsoft/callback"])
    ms.add_user(ADA, "Ada")
    g_srv = serve(google_app(g), certfile=tls[0], keyfile=tls[1])
    ms_srv = serve(microsoft_app(ms), certfile=tls[0], keyfile=tls[1])
    servers += [g_srv, ms_srv]

    people = people_emu.PeopleState(static_tokens=())
    people.token_validator = lambda t: g.validate_access_token(t) is not None
    people.seed([{"names": [{"givenName": "Grace", "familyName": "Hopper"}],
                  "emailAddresses": [{"value": "grace@example.test"}]},
                 {"names": [{"givenName": "Alan", "familyName": "Turing"}],
                  "emailAddresses": [{"value": "alan@example.test"}]}])
    graph = graph_emu.GraphState(seed=3)
    graph.accepted_tokens = None  # any token the validator vouches for
    graph.token_validator = lambda t: ms.validate_access_token(t) is not None
    graph.seed([{"givenName": "Edsger", "surname": "Dijkstra",
                 "emailAddresses": [{"address": "edsger@example.test", "name": "Edsger"}]}])
    p_srv, gr_srv = serve(people_emu.create_app(people)), serve(graph_emu.create_app(graph))
    servers += [p_srv, gr_srv]

    providers = ProviderConfig(
        google_client_id=CLIENT_ID, google_client_secret=CLIENT_SECRET,
        google_auth_uri=g_srv.base_url + "o/oauth2/v2/auth", google_token_uri=g_srv.base_url + "token",
        google_revoke_uri=g_srv.base_url + "revoke", google_certs_uri=g_srv.base_url + "oauth2/v1/certs",
        ms_client_id=CLIENT_ID, ms_client_secret=CLIENT_SECRET, ms_authority=ms_srv.base_url + "common",
        public_url=api, ca_file=tls[0], timeout=10,
    )
    rig = Rig(api, sessions, vault, g, ms, people, graph, providers, db_path, tls, servers=servers)

    def on_connected(c: Connected) -> None:
        # What temporal_on_connected does, recorded: signal-with-start, then `reconnected`.
        rig.started.append(c)
        if c.reconnect:
            rig.signalled.append((c.connection_id, "reconnected"))

    endpoints = {"google": {"endpoint": p_srv.base_url}, "microsoft": {"endpoint": gr_srv.base_url}}
    deps = ConnectDeps(
        sessions=sessions, vault=vault, pending=StorePendingFlows(sessions, vault.keyring),
        providers=providers, on_connected=on_connected, connection_settings=lambda p: endpoints[p],
    )
    app = FastAPI()
    app.include_router(connect_router(deps))
    servers.append(serve(app, port=api_port))
    yield rig
    for srv in reversed(servers):
        srv.stop()
    engine.dispose()


def _pending_rows(rig) -> int:
    with rig.sessions.begin() as s:
        return s.execute(sa.select(sa.func.count()).select_from(pending_oauth)).scalar_one()


# ------------------------------------------------------------------------ connect


def test_google_connect_stores_connection_and_sealed_tokens(rig):
    r = rig.connect("google")
    assert r.status_code == 200, r.text
    body = r.json()
    cid = body["connection_id"]
    assert body["reconnected"] is False and body["sync_started"] is True
    conn = rig.connection(cid)
    assert (conn.org_id, conn.user_id, conn.provider, conn.status) == (ORG, USER_ID, "google", "active")
    assert conn.account_ref == rig.google.users[ADA].sub and ADA not in conn.account_ref

    tokens = rig.vault.get(cid)
    issued = rig.google.issued(ADA)
    assert tokens.access_token in issued["access"] and tokens.refresh_token in issued["refresh"]
    raw = rig.stored_bytes()
    assert tokens.access_token.encode() not in raw and tokens.refresh_token.encode() not in raw
    assert tokens.access_token not in r.text and tokens.refresh_token not in r.text and ADA not in r.text
    assert rig.started == [Connected(cid, ORG, "google", False)] and rig.signalled == []
    assert _pending_rows(rig) == 0  # the state was consumed


def test_microsoft_connect_form_post(rig):
    r = rig.connect("microsoft")
    assert r.status_code == 200, r.text
    cid = r.json()["connection_id"]
    conn = rig.connection(cid)
    user = rig.microsoft.users[ADA]
    assert conn.provider == "microsoft" and conn.account_ref == f"{user.oid}.{user.tenant_id}"
    tokens = rig.vault.get(cid)
    assert tokens.refresh_token in rig.microsoft.issued(ADA)["refresh"]
    assert tokens.refresh_token.encode() not in rig.stored_bytes()
    assert rig.started[-1] == Connected(cid, ORG, "microsoft", False)

    # The Graph connector built from the vault lists the mailbox with the issued token.
    mailbox = MailboxBuilder(rig.sessions, rig.vault, rig.providers)(rig.info(cid))
    page = mailbox.list_changes(None)
    assert [r.content.given_name for r in page.records if not r.deleted] == ["Edsger"]
    # A token the vault still believes in but Graph refuses (401): refreshed once, call repeated.
    rig.microsoft.access_tokens[tokens.access_token].revoked = True
    page = mailbox.list_changes(None)
    assert len(page.records) == 1
    rotated = rig.vault.get(cid)
    assert rotated.access_token != tokens.access_token and rotated.refresh_token != tokens.refresh_token
    mailbox.close()


def test_pending_flow_is_sealed_and_keyed_by_hash(rig):
    with rig.browser() as b:
        r = b.get(f"{rig.api}connect/google/start", params={"org_id": ORG, "user_id": USER_ID})
    state = httpx.URL(r.headers["location"]).params["state"]
    with rig.sessions.begin() as s:
        row = s.execute(sa.select(pending_oauth)).one()
    assert row.state == state_key(state) and state not in row.state
    assert state.encode() not in rig.stored_bytes()


def test_forged_state_and_denied_consent_store_nothing(rig):
    with rig.browser() as b:
        r = b.get(f"{rig.api}connect/google/start", params={"org_id": ORG, "user_id": USER_ID})
        consent = b.get(r.headers["location"])
        callback = httpx.URL(consent.headers["location"])
        forged = callback.copy_merge_params({"state": "forged-state"})
        r = b.get(str(forged))
        assert r.status_code == 400 and r.json()["error"] == "unknown_state"
        assert "start connecting again" in r.json()["message"]
        # the forgery did not consume the real flow ...
        r = b.get(str(callback))
        assert r.status_code == 200
        # ... and a replay of the real callback is refused
        r = b.get(str(callback))
        assert r.status_code == 400 and r.json()["error"] == "unknown_state"
    assert len(rig.started) == 1

    rig.google.approve_consent = False
    r = rig.connect("google")
    assert r.status_code == 400
    assert r.json()["error"] == "provider_error" and "access_denied" in r.json()["message"]
    rig.microsoft.approve_consent = False
    r = rig.connect("microsoft")
    assert r.status_code == 400 and r.json()["error"] == "provider_error"
    with rig.sessions.begin() as s:
        assert len(repo.list_connections(s, ORG)) == 1
    assert len(rig.started) == 1

    with rig.browser() as b:
        assert b.get(f"{rig.api}connect/yahoo/start", params={"org_id": ORG, "user_id": USER_ID}).status_code == 404
        assert b.get(f"{rig.api}connect/google/start", params={"org_id": "nope", "user_id": USER_ID}).status_code == 404


def test_reconnect_reuses_connection_and_signals(rig):
    first = rig.connect("google").json()["connection_id"]
    old = rig.vault.get(first)
    with rig.sessions.begin() as s:
        repo.set_connection_status(s, first, "needs_reauth")
    r = rig.connect("google")
    assert r.status_code == 200 and r.json()["reconnected"] is True
    assert r.json()["connection_id"] == first
    assert rig.connection(first).status == "active"
    assert rig.vault.get(first).refresh_token != old.refresh_token
    assert rig.started[-1] == Connected(first, ORG, "google", True)
    assert rig.signalled == [(first, "reconnected")]
    with rig.sessions.begin() as s:
        assert [c.id for c in repo.list_connections(s, ORG)] == [first]


def test_a_forged_id_token_connects_nothing(rig):
    """The account a connection is keyed by comes from a verified id_token, end to end."""
    for provider, state in (("google", rig.google), ("microsoft", rig.microsoft)):
        state.id_token_mode = "foreign_key"  # the right key id, someone else's key
        r = rig.connect(provider)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "id_token_rejected" and "start connecting again" in r.json()["message"]
    with rig.sessions.begin() as s:
        assert repo.list_connections(s, ORG) == []
    assert rig.started == []


def test_malformed_start_links_are_400_and_unsigned_ones_403(rig):
    """A signed-link deployment (api.app.signed_start_authorizer): malformed `exp` / `sig`
    are a 400 with a reason (they were 500s: str.isdigit() accepts "²", int() refuses it and
    5,000 digits; compare_digest raises on non-ASCII str)."""
    key = secrets.token_bytes(32)
    deps = ConnectDeps(sessions=rig.sessions, vault=rig.vault, pending=StorePendingFlows(rig.sessions, rig.vault.keyring),
                       providers=rig.providers, on_connected=lambda c: None,
                       authorize_start=signed_start_authorizer(key))
    app = FastAPI()
    app.include_router(connect_router(deps))
    server = serve(app)
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            good = httpx.URL(start_link(server.base_url, "google", ORG, USER_ID, key))
            assert http.get(good.raw_path.decode()).status_code == 302

            def start(**params):
                return http.get("/connect/google/start", params={**dict(good.params), **params})

            for params, reason in (({"exp": "\u00b2"}, "bad_exp"), ({"exp": "9" * 5000}, "bad_exp"),
                                   ({"exp": "-1"}, "bad_exp"), ({"sig": "\u00e9" * 64}, "bad_sig"),
                                   ({"sig": "abc"}, "bad_sig")):
                r = start(**params)
                assert r.status_code == 400, (params, r.text)
                assert r.json()["error"] == reason
            assert start(sig="0" * 64).status_code == 403  # well-formed, wrong
            assert start(exp=str(int(time.time()) - 1)).status_code == 403  # expired (and so not what was signed)
            assert http.get("/connect/google/start", params={"org_id": ORG, "user_id": USER_ID}).status_code == 403
    finally:
        server.stop()


def test_callback_body_is_bounded_and_must_be_utf8(rig):
    """The form_post callback reads its body as a stream with a ceiling (it used to read
    any size whole), and a body that is not UTF-8 is a 400 (it was a 500)."""
    from tests.test_webhooks import STOPPED_READING_BELOW, chunked_upload

    url = f"{rig.api}connect/microsoft/callback"
    with httpx.Client(timeout=30) as http:
        r = http.post(url, content=b"code=\xff\xfe&state=x", headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and r.json()["error"] == "bad_encoding"
        r, sent = chunked_upload(http, url, headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        assert sent < STOPPED_READING_BELOW, sent
        r = http.post(url, content=b"x" * (1 << 20))  # declared too large: refused before reading
        assert r.status_code == 413
    assert rig.started == []


# ------------------------------------------------------------------------ vault credentials


def _expire_access(state: OAuthState, token: str) -> None:
    """Time passes for one access token: at the provider and in the vault."""
    state.access_tokens[token].expires_at = 0


def test_google_people_from_vault_refreshes_and_rotates(rig):
    cid = rig.connect("google").json()["connection_id"]
    first = rig.vault.get(cid)
    mailbox = MailboxBuilder(rig.sessions, rig.vault, rig.providers)(rig.info(cid))
    page = mailbox.list_changes(None)
    names = sorted(r.content.given_name for r in page.records)
    assert names == ["Alan", "Grace"]
    assert rig.google.counters["token_refresh"] == 0  # the connect-time token was used

    # The access token expires: refreshed before the call (60 s leeway), rotated refresh token stored.
    _expire_access(rig.google, first.access_token)
    from datetime import datetime, timedelta, timezone

    rig.vault.put(cid, first.access_token, None, datetime.now(timezone.utc) + timedelta(seconds=30))
    page = mailbox.list_changes(None)
    assert len(page.records) == 2
    second = rig.vault.get(cid)
    assert rig.google.counters["token_refresh"] == 1
    assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
    assert second.refresh_token in rig.google.issued(ADA)["refresh"]

    # Refused although the vault thinks it fresh (401): google-auth refreshes once through the vault.
    _expire_access(rig.google, second.access_token)
    assert len(mailbox.list_changes(None).records) == 2
    third = rig.vault.get(cid)
    assert rig.google.counters["token_refresh"] == 2 and third.refresh_token != second.refresh_token

    # A fresh builder (another worker) uses the stored rotated token without refreshing.
    other = MailboxBuilder(rig.sessions, rig.vault, rig.providers)(rig.info(cid))
    assert len(other.list_changes(None).records) == 2
    assert rig.google.counters["token_refresh"] == 2


def test_revoked_refresh_token_needs_reauth(rig):
    cid = rig.connect("google").json()["connection_id"]
    tokens = rig.vault.get(cid)
    mailbox = MailboxBuilder(rig.sessions, rig.vault, rig.providers)(rig.info(cid))
    rig.google.revoke_refresh_tokens(ADA)
    _expire_access(rig.google, tokens.access_token)
    with pytest.raises(ReauthRequired):
        mailbox.list_changes(None)
    assert rig.connection(cid).status == "needs_reauth"
    assert rig.vault.get(cid) is not None  # kept: a reconnect replaces them, a disconnect deletes them

    # Reconnecting brings it back.
    assert rig.connect("google").json()["connection_id"] == cid
    assert rig.connection(cid).status == "active"
    fresh = MailboxBuilder(rig.sessions, rig.vault, rig.providers)(rig.info(cid))
    assert len(fresh.list_changes(None).records) == 2


def test_settings_may_not_carry_secrets(rig):
    from models.errors import Fatal

    with pytest.raises(Fatal):
        rig.providers.with_settings({"oauth": {"client_secret": "x"}})
    with pytest.raises(Fatal):
        rig.providers.with_settings({"refresh_token": "x"})
    moved = rig.providers.with_settings({"oauth": {"token_uri": "https://127.0.0.1:1/token"}})
    assert moved.google_token_uri == "https://127.0.0.1:1/token" and moved.google_client_id == CLIENT_ID


def test_concurrent_refreshes_use_one_rotation(rig):
    """Microsoft kills the whole grant when a replaced refresh token is presented again:
    eight threads finding the token expired at once must refresh exactly once."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import datetime, timedelta, timezone

    from connectors.credentials import CredentialFactory

    cid = rig.connect("microsoft").json()["connection_id"]
    t = rig.vault.get(cid)
    rig.vault.put(cid, t.access_token, None, datetime.now(timezone.utc) - timedelta(seconds=1))
    sources = [CredentialFactory(rig.sessions, rig.vault, rig.providers).token_source(cid) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(lambda src: src.access_token(), sources))
    assert len(got) == 1 and rig.microsoft.counters["token_refresh"] == 1
    assert rig.microsoft.counters["refresh_token_reuse"] == 0
    assert rig.microsoft.validate_access_token(got.pop()) is not None
