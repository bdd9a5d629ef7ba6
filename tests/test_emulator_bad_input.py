"""The emulators answer bad input the way a provider would (stored, or a 4xx), never 500.

A lone surrogate is the sharp case: a JSON body may carry the escape "\\ud800",
Python decodes it to a lone surrogate, and UTF-8 encoding of any later answer that
holds it used to fail. PROVIDERS.md says nothing on it, so the emulators store it
and send it back escaped (a JSON round trip); malformed forms get a 4xx.
"""

from __future__ import annotations

import httpx
import pytest

from emulators.google_people import PeopleState
from emulators.google_people import create_app as people_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.oauth import OAuthState, google_app
from emulators.server import serve

LONE = "\\ud800"  # the JSON escape, as a client puts it on the wire


def _json(raw: str) -> dict:
    return {"content": raw.encode("ascii"), "headers": {"Content-Type": "application/json"}}


@pytest.fixture
def graph_client():
    server = serve(graph_app(GraphState(tokens={"t"})))
    with httpx.Client(base_url=server.base_url + "v1.0", headers={"Authorization": "Bearer t"}) as client:
        yield client
    server.stop()


@pytest.fixture
def people_client():
    server = serve(people_app(PeopleState()))
    with httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer emulator-token"}) as client:
        yield client
    server.stop()


def test_graph_stores_lone_surrogates_and_serves_them_escaped(graph_client):
    c = graph_client
    made = c.post("/me/contacts", **_json(
        '{"givenName": "A%sn", "emailAddresses": [{"address": "a%s@example.test", "name": "%s"}]}' % (LONE, LONE, LONE)))
    assert made.status_code == 201 and made.json()["givenName"] == "A\ud800n"
    iid = made.json()["id"]
    assert c.get(f"/me/contacts/{iid}").json()["emailAddresses"][0]["name"] == "\ud800"
    assert c.get("/me/contacts").status_code == 200
    assert c.get("/me/contacts/delta").json()["value"][0]["givenName"] == "A\ud800n"
    assert c.patch(f"/me/contacts/{iid}", **_json('{"surname": "%s"}' % LONE)).status_code == 200
    batch = c.post("/$batch", **_json(
        '{"requests": [{"id": "1", "method": "GET", "url": "/me/contacts/%s"},'
        ' {"id": "2", "method": "POST", "url": "/me/contacts", "headers": {"Content-Type": "application/json"},'
        ' "body": {"givenName": "%s"}}]}' % (LONE, LONE)))
    assert batch.status_code == 200
    assert sorted(a["status"] for a in batch.json()["responses"]) == [201, 404]
    assert c.post("/me/contacts", **_json('{"given%sName": 1}' % LONE)).status_code == 400


def test_people_stores_lone_surrogates_and_serves_them_escaped(people_client):
    c = people_client
    made = c.post("v1/people:createContact", **_json(
        '{"names": [{"givenName": "A%sn"}], "emailAddresses": [{"value": "a%s@example.test"}],'
        ' "clientData": [{"key": "k", "value": "%s"}]}' % (LONE, LONE, LONE)))
    assert made.status_code == 200 and made.json()["names"][0]["givenName"] == "A\ud800n"
    listing = c.get("v1/people/me/connections", params={"personFields": "names,emailAddresses", "requestSyncToken": "true"})
    assert listing.status_code == 200 and listing.json()["connections"][0]["emailAddresses"][0]["value"] == "a\ud800@example.test"
    assert c.get(f"v1/{made.json()['resourceName']}", params={"personFields": "clientData"}).status_code == 200
    batch = c.post("v1/people:batchCreateContacts", **_json(
        '{"contacts": [{"contactPerson": {"names": [{"givenName": "%s"}]}}], "readMask": "names"}' % LONE))
    assert batch.status_code == 200
    assert c.post("v1/people:createContact", **_json('{"na%smes": []}' % LONE)).status_code == 400
    assert c.post("token", content=b"grant_type=refresh_token&refresh_token=%ED%A0%80\xff").status_code == 200


def test_people_serves_malformed_seeded_data_as_stored():
    state = PeopleState()
    server = serve(people_app(state))
    [name] = state.seed([{"names": ["not an object"], "organizations": [7]}], validate=False)
    try:
        r = httpx.get(server.base_url + "v1/people/me/connections", params={"personFields": "names,organizations"},
                      headers={"Authorization": "Bearer emulator-token"})
    finally:
        server.stop()
    assert r.status_code == 200
    [person] = r.json()["connections"]
    assert person["resourceName"] == name and person["names"] == ["not an object"] and person["organizations"] == [7]


def test_oauth_token_endpoint_answers_malformed_forms_with_4xx():
    state = OAuthState(provider="google")
    state.register_client("cid", "s\u00e9cret", ["http://127.0.0.1/cb"])
    server = serve(google_app(state))
    try:
        with httpx.Client(base_url=server.base_url) as c:
            # invalid UTF-8 in the body, a secret that is not ASCII, a non-ASCII PKCE verifier
            bad_bytes = c.post("token", content=b"grant_type=refresh_token&refresh_token=x%ED%A0%80&client_id=cid&client_secret=y\xff")
            non_ascii = c.post("token", data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": "cid",
                                              "client_secret": "\u00e9"})
            verifier = c.post("token", data={"grant_type": "authorization_code", "code": "x", "client_id": "cid",
                                             "client_secret": "s\u00e9cret", "code_verifier": "\u00e9"})
            revoke = c.post("revoke", content=b"token=%ED%A0%80\xff")
    finally:
        server.stop()
    assert (bad_bytes.status_code, non_ascii.status_code) == (401, 401)
    assert verifier.status_code == 400 and revoke.status_code == 400
