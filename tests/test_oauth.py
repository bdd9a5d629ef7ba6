"""Connecting mailboxes end to end: google-auth-oauthlib / google-auth and msal against
the OAuth emulators on real ports over TLS (certificate made at test time)."""

from __future__ import annotations

import html
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa

from models.errors import ReauthRequired, Transient
from connectors.oauth_google import (
    SCOPES,
    FlowRejected,
    GoogleOAuth,
    HttpOptions,
    InMemoryPendingFlows,
)
from connectors.oauth_microsoft import MicrosoftOAuth
from emulators.oauth import OAuthState, google_app, make_self_signed_cert, microsoft_app, s256
from emulators.server import serve
from store.vault import KeyRing, TokenVault, generate_key

CLIENT_ID, CLIENT_SECRET = "concord-test-client", "s3cret-client"
REDIRECT = "https://app.example.test/oauth/callback"
USER = "ada@example.test"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def http(tls):
    return HttpOptions(verify=tls[0], trust_env=False, timeout=5)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def _emulator(provider, app_factory, tls):
    state = OAuthState(provider=provider)
    state.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
    state.add_user(USER, "Ada")
    server = serve(app_factory(state), certfile=tls[0], keyfile=tls[1])
    return state, server


@pytest.fixture
def google_emu(tls):
    state, server = _emulator("google", google_app, tls)
    yield state, server.base_url
    server.stop()


@pytest.fixture
def ms_emu(tls):
    state, server = _emulator("microsoft", microsoft_app, tls)
    yield state, server.base_url
    server.stop()


@pytest.fixture
def google(google_emu, http, clock):
    _, base = google_emu
    connector = GoogleOAuth(
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT,
        pending=InMemoryPendingFlows(clock=clock),
        auth_uri=base + "o/oauth2/v2/auth",
        token_uri=base + "token",
        revoke_uri=base + "revoke",
        certs_uri=base + "oauth2/v1/certs",
        http=http,
        clock=clock,
    )
    yield connector
    connector.close()


@pytest.fixture
def microsoft(ms_emu, http, clock):
    _, base = ms_emu
    connector = MicrosoftOAuth(
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT,
        pending=InMemoryPendingFlows(clock=clock),
        authority=base + "common",
        http=http,
        clock=clock,
    )
    yield connector
    connector.close()


def consent(url: str, tls) -> dict:
    """The user's browser: follow the consent URL and hand back what reaches our redirect_uri
    (query parameters of a redirect, or the fields of a form_post page)."""
    resp = requests.get(url, allow_redirects=False, verify=tls[0], timeout=5)
    if resp.status_code == 200 and "<form" in resp.text:
        assert f'action="{REDIRECT}"' in resp.text and 'method="POST"' in resp.text
        return {html.unescape(k): html.unescape(v) for k, v in re.findall(r'name="([^"]*)" value="([^"]*)"', resp.text)}
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def query(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def connect(connector, tls) -> tuple:
    url, pending = connector.start({"org_id": "o1", "user_id": "u1"})
    return connector.finish(consent(url, tls)), pending


# ==================================================================== Google


def _forged(state: str) -> str:
    """A state one character off the real one (never equal to it)."""
    return ("y" if state[0] == "x" else "x") + state[1:]


def test_google_consent_url_and_code_exchange(google, google_emu, tls):
    state, base = google_emu
    url, pending = google.start({"org_id": "o1"}, login_hint=USER)
    q = query(url)
    assert url.startswith(base + "o/oauth2/v2/auth?")
    assert q["state"] == pending.state and len(pending.state) >= 43
    assert q["code_challenge_method"] == "S256"
    assert q["code_challenge"] == s256(pending.code_verifier)
    assert pending.code_verifier not in url
    assert q["access_type"] == "offline" and q["prompt"] == "consent"
    assert SCOPES["contacts"]["google"][0] in q["scope"].split()
    assert len(google.pending) == 1

    account = google.finish(consent(url, tls))
    assert account.provider == "google" and account.email == USER
    assert account.account_id == state.users[USER].sub
    assert account.connection_hint == {"org_id": "o1"}
    assert account.tokens.refresh_token in state.issued(USER)["refresh"]
    info = state.validate_access_token(account.tokens.access_token, SCOPES["contacts"]["google"][0])
    assert info is not None and info.user.email == USER
    assert account.tokens.expires_at is not None and not account.tokens.expired()
    assert len(google.pending) == 0
    assert USER not in repr(account) and account.tokens.access_token not in repr(account)


def test_google_forged_reused_and_expired_state(google, google_emu, tls, clock):
    state, _ = google_emu
    url, pending = google.start()
    params = consent(url, tls)

    with pytest.raises(FlowRejected) as err:
        google.finish({**params, "state": "forged-" + pending.state[7:]})
    assert err.value.reason == "unknown_state"
    with pytest.raises(FlowRejected):
        google.finish({"code": params["code"]})  # no state at all

    google.finish(params)  # the forgeries did not consume the real flow
    with pytest.raises(FlowRejected) as err:
        google.finish(params)  # replayed callback
    assert err.value.reason == "unknown_state"
    assert state.counters["token_authorization_code"] == 1  # rejected before reaching Google

    url, _ = google.start()
    params = consent(url, tls)
    clock.now += 10 * 60 + 1
    with pytest.raises(FlowRejected) as err:
        google.finish(params)
    assert err.value.reason == "expired_state"
    assert isinstance(err.value, ReauthRequired)


def test_google_consent_denied(google, google_emu, tls):
    state, _ = google_emu
    state.approve_consent = False
    url, _ = google.start()
    params = consent(url, tls)
    assert params["error"] == "access_denied" and "code" not in params
    with pytest.raises(FlowRejected) as err:
        google.finish(params)
    assert err.value.reason == "provider_error" and err.value.provider_error == "access_denied"


def test_google_pkce_enforced_by_emulator(google, google_emu, tls):
    state, base = google_emu
    # A stolen code without the verifier is useless.
    url, _ = google.start()
    code = consent(url, tls)["code"]
    resp = requests.post(
        base + "token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
              "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        verify=tls[0], timeout=5,
    )
    assert resp.status_code == 400 and resp.json() == {"error": "invalid_grant", "error_description": "Missing code verifier."}

    # The library sends a verifier, but the wrong one: the emulator refuses the code.
    url, pending = google.start()
    params = consent(url, tls)
    pending.code_verifier = pending.code_verifier[::-1]
    with pytest.raises(FlowRejected) as err:
        google.finish(params)
    assert err.value.reason == "code_rejected" and err.value.provider_error == "invalid_grant"
    assert state.counters["token_error:invalid_grant"] == 2
    assert state.issued()["access"] == []


def test_google_refresh_keeps_or_rotates(google, google_emu, tls):
    state, _ = google_emu
    account, _ = connect(google, tls)
    rt1 = account.tokens.refresh_token

    same = google.refresh(rt1)  # Google's default: no new refresh token
    assert same.refresh_token == rt1
    assert same.access_token != account.tokens.access_token
    assert state.validate_access_token(same.access_token) is not None

    state.rotate_refresh_tokens = True
    rotated = google.refresh(rt1)
    assert rotated.refresh_token != rt1
    assert rotated.refresh_token == state.issued()["refresh"][-1]
    assert google.refresh(rotated.refresh_token).refresh_token not in (rt1, rotated.refresh_token)
    with pytest.raises(ReauthRequired):
        google.refresh(rt1)  # replaced: refused


def test_google_revoked_refresh_token_needs_reauth(google, google_emu, tls):
    state, _ = google_emu
    account, _ = connect(google, tls)
    assert state.revoke_refresh_tokens(USER) == 1
    with pytest.raises(ReauthRequired) as err:
        google.refresh(account.tokens.refresh_token)
    assert type(err.value) is ReauthRequired and err.value.retryable is False
    assert account.tokens.refresh_token not in str(err.value)


def test_google_revoke_endpoint(google, google_emu, tls):
    state, _ = google_emu
    account, _ = connect(google, tls)
    assert google.revoke(account.tokens.refresh_token) is True
    assert state.counters["revoke"] == 1 and state.revocations == ["refresh"]
    assert state.validate_access_token(account.tokens.access_token) is None  # the grant is gone
    with pytest.raises(ReauthRequired):
        google.refresh(account.tokens.refresh_token)
    assert google.revoke(account.tokens.refresh_token) is False  # already revoked: nothing to do


def test_google_server_errors_are_transient(google, google_emu, tls, http):
    state, _ = google_emu
    # Code exchange: a 503 keeps the pending flow so the callback can be retried.
    url, _ = google.start()
    params = consent(url, tls)
    state.fail_next_token_requests(1, 503)
    with pytest.raises(Transient):
        google.finish(params)
    account = google.finish(params)

    # Refresh: google-auth retries 5xx itself (3 attempts), then we say Transient.
    state.fail_next_token_requests(3, 503)
    with pytest.raises(Transient):
        google.refresh(account.tokens.refresh_token)
    assert state.counters["token_failed"] == 4

    # A timeout is Transient too.
    state.token_delay = 1.0
    google.http = HttpOptions(verify=http.verify, trust_env=False, timeout=0.2)
    with pytest.raises(Transient):
        google.refresh(account.tokens.refresh_token)


def test_google_refresh_stores_rotated_token_in_vault(google, google_emu, tls, sqlite_url):
    state, _ = google_emu
    state.rotate_refresh_tokens = True
    engine = sa.create_engine(sqlite_url)
    vault = TokenVault(engine, KeyRing.parse(f"k1:{generate_key()}"))
    vault.create_table()
    google.vault = vault
    account, _ = connect(google, tls)
    vault.put_tokens("conn-g", account.tokens)

    fresh = google.refresh_connection("conn-g")
    stored = vault.get("conn-g")
    assert stored.refresh_token == fresh.refresh_token != account.tokens.refresh_token
    assert stored.access_token == fresh.access_token
    google.refresh_connection("conn-g")  # works again from what was stored
    engine.dispose()


# ==================================================================== Microsoft


def test_microsoft_consent_url_and_code_exchange(microsoft, ms_emu, tls):
    state, base = ms_emu
    url, pending = microsoft.start({"org_id": "o1"}, login_hint=USER)
    q = query(url)
    assert url.startswith(base + "common/oauth2/v2.0/authorize?")
    assert q["state"] == pending.state
    assert q["code_challenge_method"] == "S256"
    assert q["code_challenge"] == s256(pending.code_verifier)
    assert q["nonce"] and q["client_info"] == "1" and q["response_mode"] == "form_post"
    assert set(q["scope"].split()) >= {"Contacts.ReadWrite", "offline_access", "openid", "profile"}
    assert state.counters["discovery"] == 1  # msal read the openid configuration

    account = microsoft.finish(consent(url, tls))
    user = state.users[USER]
    assert account.provider == "microsoft" and account.email == USER
    assert account.account_id == f"{user.oid}.{user.tenant_id}"
    assert state.validate_access_token(account.tokens.access_token, "Contacts.ReadWrite") is not None
    assert account.tokens.refresh_token in state.issued(USER)["refresh"]
    assert account.tokens.expires_at is not None


def test_microsoft_forged_and_reused_state(microsoft, ms_emu, tls):
    state, _ = ms_emu
    url, pending = microsoft.start()
    params = consent(url, tls)
    with pytest.raises(FlowRejected) as err:
        microsoft.finish({**params, "state": _forged(pending.state)})
    assert err.value.reason == "unknown_state"
    microsoft.finish(params)
    with pytest.raises(FlowRejected) as err:
        microsoft.finish(params)
    assert err.value.reason == "unknown_state"
    assert state.counters["token_authorization_code"] == 1


def test_microsoft_consent_denied(microsoft, ms_emu, tls):
    state, _ = ms_emu
    state.approve_consent = False
    url, _ = microsoft.start()
    with pytest.raises(FlowRejected) as err:
        microsoft.finish(consent(url, tls))
    assert err.value.provider_error == "access_denied"


def test_microsoft_pkce_mismatch_rejected_by_emulator(microsoft, ms_emu, tls):
    state, _ = ms_emu
    url, pending = microsoft.start()
    params = consent(url, tls)
    pending.extra["msal_flow"]["code_verifier"] = "wrong-" + pending.code_verifier[6:]
    with pytest.raises(FlowRejected) as err:
        microsoft.finish(params)
    assert err.value.reason == "code_rejected" and err.value.provider_error == "invalid_grant"
    assert "AADSTS501481" in str(err.value)
    assert state.issued()["access"] == []


def test_microsoft_refresh_rotates(microsoft, ms_emu, tls):
    state, _ = ms_emu
    account, _ = connect(microsoft, tls)
    rt1 = account.tokens.refresh_token
    fresh = microsoft.refresh(rt1)
    assert fresh.refresh_token and fresh.refresh_token != rt1
    assert fresh.refresh_token == state.issued(USER)["refresh"][-1]
    assert state.validate_access_token(fresh.access_token, "Contacts.ReadWrite") is not None
    again = microsoft.refresh(fresh.refresh_token)
    assert again.refresh_token not in (rt1, fresh.refresh_token)
    with pytest.raises(ReauthRequired):
        microsoft.refresh(rt1)  # the replaced token: its reuse kills the grant
    with pytest.raises(ReauthRequired):
        microsoft.refresh(again.refresh_token)


def test_microsoft_revoked_or_consent_withdrawn_needs_reauth(microsoft, ms_emu, tls):
    state, _ = ms_emu
    account, _ = connect(microsoft, tls)
    state.withdraw_consent(USER)
    with pytest.raises(ReauthRequired) as err:
        microsoft.refresh(account.tokens.refresh_token)
    assert err.value.detail["suberror"] == "consent_required"
    assert err.value.detail["aadsts"] == "AADSTS65001"

    account, _ = connect(microsoft, tls)  # consenting again works
    state.revoke_refresh_tokens(USER)
    with pytest.raises(ReauthRequired) as err:
        microsoft.refresh(account.tokens.refresh_token)
    assert err.value.detail["aadsts"] == "AADSTS50173"


def test_microsoft_server_errors_are_transient(microsoft, ms_emu, tls, http):
    state, base = ms_emu
    account, _ = connect(microsoft, tls)
    state.fail_next_token_requests(1, 503)
    with pytest.raises(Transient):
        microsoft.refresh(account.tokens.refresh_token)

    url, _ = microsoft.start()
    params = consent(url, tls)
    state.fail_next_token_requests(1, 500)
    with pytest.raises(Transient):
        microsoft.finish(params)
    # msal replays a 5xx from its own throttle cache for 5 s; the retry runs as a new
    # activity attempt (another connector instance) sharing the pending-flow store.
    retry = MicrosoftOAuth(
        CLIENT_ID, CLIENT_SECRET, REDIRECT, pending=microsoft.pending, authority=base + "common", http=http,
    )
    assert retry.finish(params).email == USER  # the pending flow survived the outage
    retry.close()

    # TLS is really checked: the system CAs do not trust the emulator.
    untrusting = MicrosoftOAuth(
        CLIENT_ID, CLIENT_SECRET, REDIRECT, pending=InMemoryPendingFlows(), authority=base + "common",
        http=HttpOptions(verify=True, trust_env=False, timeout=5),
    )
    with pytest.raises(Transient):
        untrusting.start()
    untrusting.close()


def test_microsoft_revoke_forgets_tokens(microsoft, ms_emu, tls, sqlite_url):
    engine = sa.create_engine(sqlite_url)
    vault = TokenVault(engine, KeyRing.parse(f"k1:{generate_key()}"))
    vault.create_table()
    microsoft.vault = vault
    account, _ = connect(microsoft, tls)
    vault.put_tokens("conn-m", account.tokens)
    fresh = microsoft.refresh_connection("conn-m")
    assert vault.get("conn-m").refresh_token == fresh.refresh_token != account.tokens.refresh_token
    assert microsoft.revoke(connection_id="conn-m") is True
    assert vault.get("conn-m") is None
    with pytest.raises(ReauthRequired):
        microsoft.refresh_connection("conn-m")
    engine.dispose()


# ==================================================================== ID tokens


def _forge(state: OAuthState, how: str) -> None:
    """Make the emulator's next ID tokens wrong in one way."""
    now = int(time.time())
    if how in ("unsigned", "foreign_key"):
        state.id_token_mode = how
    else:
        state.id_token_overrides = {
            "expired": {"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600},
            "wrong_audience": {"aud": "another-client"},
            "wrong_issuer": {"iss": "https://issuer.example.test"},
            "no_expiry": {"exp": None},
        }[how]


@pytest.mark.parametrize("how", ["unsigned", "foreign_key", "expired", "wrong_audience", "wrong_issuer", "no_expiry"])
@pytest.mark.parametrize("provider", ["google", "microsoft"])
def test_id_token_is_verified_not_decoded(provider, how, request, tls):
    """The account a connection is keyed by comes from a verified id_token: one not signed
    by the issuer's published key, expired, for another client or from another issuer is
    refused, although the token endpoint handed it over TLS."""
    connector = request.getfixturevalue(provider)
    state, _ = request.getfixturevalue("google_emu" if provider == "google" else "ms_emu")
    connect(connector, tls)  # a genuine one goes through (and warms the key cache)
    url, _ = connector.start()
    params = consent(url, tls)
    _forge(state, how)
    with pytest.raises(FlowRejected) as err:
        connector.finish(params)
    assert err.value.reason == "id_token_rejected"


@pytest.mark.parametrize("provider", ["google", "microsoft"])
def test_id_token_keys_are_fetched_once_and_cached(provider, request, tls):
    connector = request.getfixturevalue(provider)
    state, _ = request.getfixturevalue("google_emu" if provider == "google" else "ms_emu")
    for _ in range(3):
        account, _ = connect(connector, tls)
        assert account.email == USER
    assert state.counters["certs"] == 1  # the key document's max-age is honoured


def test_microsoft_id_token_with_another_nonce_is_refused(microsoft, ms_emu, tls):
    state, _ = ms_emu
    url, _ = microsoft.start()
    params = consent(url, tls)
    state.id_token_overrides = {"nonce": "not-the-flows-nonce"}
    with pytest.raises(FlowRejected) as err:  # msal raises RuntimeError for this one
        microsoft.finish(params)
    assert err.value.reason == "code_rejected"


def test_scope_table_is_narrow():
    assert SCOPES["contacts"]["google"] == ("https://www.googleapis.com/auth/contacts",)
    assert SCOPES["contacts"]["microsoft"] == ("Contacts.ReadWrite", "offline_access")
    for cap in ("mail", "calendar"):
        assert SCOPES[cap]["google"] and SCOPES[cap]["microsoft"]
    assert not any("mail.google.com" in s for s in SCOPES["mail"]["google"])  # never full Gmail access
