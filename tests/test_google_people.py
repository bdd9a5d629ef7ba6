"""The Google contacts connector against the People emulator on a real port.

Everything goes through google-api-python-client and google-auth exactly as in
production; only the endpoint differs. Tests assert the behaviour the sync relies
on: complete rounds, no lost changes, and each failure arriving as the right
recovery class.
"""

from __future__ import annotations

import httpx
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from models.errors import (
    AuthExpired,
    CursorExpired,
    NotFound,
    PreconditionFailed,
    RateLimited,
    ReauthRequired,
    Transient,
    ValidationRejected,
)
from connectors.google_people import GooglePeopleContacts, translate_http_error
from connectors.protocols import WriteRequest
from emulators.google_people import PeopleState, create_app
from emulators.server import free_port, serve
from models.contact import Contact


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def people(clock):
    state = PeopleState(clock=clock)
    server = serve(create_app(state))
    yield state, server.base_url
    server.stop()


def person(i: int, **extra) -> dict:
    body = {
        "names": [{"givenName": f"Given{i}", "familyName": f"Family{i}"}],
        "emailAddresses": [{"value": f"p{i}@example.com"}],
    }
    body.update(extra)
    return body


def drain(conn: GooglePeopleContacts, cursor: str | None):
    """A whole delta round: all records and the new cursor, page by page."""
    records, page, pages = [], None, 0
    while True:
        result = conn.list_changes(cursor, page)
        pages += 1
        records.extend(result.records)
        if result.next_page is None:
            return records, result.cursor, pages
        page = result.next_page


def raw_service(base_url: str):
    return build(
        "people", "v1", credentials=Credentials(token="emulator-token"), static_discovery=True,
        cache_discovery=False, client_options={"api_endpoint": base_url},
    )


def test_full_listing_pages_then_incremental_sees_edits_creates_and_deletes(people):
    state, url = people
    names = state.seed([person(i) for i in range(25)])
    conn = GooglePeopleContacts.for_emulator(url, page_size=10)

    records, cursor, pages = drain(conn, None)
    assert pages == 3 and cursor
    assert sorted(r.external_id for r in records) == sorted(names)
    first = next(r for r in records if r.external_id == names[0])
    assert first.content.given_name == "Given0" and first.content.emails == ("p0@example.com",)
    assert first.etag and first.updated_at == pytest.approx(1_700_000_000.0)

    state.user_edit(names[3], {"names": [{"givenName": "Renamed"}]})
    state.user_delete(names[4])
    created = conn.create_many([WriteRequest(key="k1", content=Contact(given_name="New"))])[0].record

    changes, cursor2, _ = drain(conn, cursor)
    by_id = {r.external_id: r for r in changes}
    assert set(by_id) == {names[3], names[4], created.external_id}
    assert by_id[names[3]].content.given_name == "Renamed" and by_id[names[3]].content.family_name == ""
    assert by_id[names[4]].deleted and by_id[names[4]].content is None
    assert cursor2 and cursor2 != cursor

    assert drain(conn, cursor2)[0] == []


def test_change_during_pagination_moves_to_next_round(people):
    state, url = people
    names = state.seed([person(i) for i in range(6)])
    conn = GooglePeopleContacts.for_emulator(url, page_size=2)
    first = conn.list_changes(None)
    # Edit one already returned and one not yet returned while the round is open.
    state.user_edit(first.records[0].external_id, {"biographies": [{"value": "seen-before"}]})
    state.user_edit(names[5], {"biographies": [{"value": "not-yet-seen"}]})
    rest, cursor, _ = [], None, 0
    page = first.next_page
    while page:
        result = conn.list_changes(None, page)
        rest.extend(result.records)
        page, cursor = result.next_page, result.cursor
    round_ids = [r.external_id for r in first.records + rest]
    assert len(round_ids) == len(set(round_ids))
    later, _, _ = drain(conn, cursor)
    notes = {r.external_id: r.content.notes for r in later}
    assert notes == {first.records[0].external_id: "seen-before", names[5]: "not-yet-seen"}
    assert set(round_ids) | set(notes) == set(names)


def test_page_token_with_different_params_is_refused(people):
    state, url = people
    state.seed([person(i) for i in range(3)])
    svc = raw_service(url).people().connections()
    page1 = svc.list(resourceName="people/me", personFields="names", pageSize=2).execute()
    with pytest.raises(HttpError) as err:
        svc.list(resourceName="people/me", personFields="names", pageSize=1, pageToken=page1["nextPageToken"]).execute()
    assert err.value.resp.status == 400
    with pytest.raises(HttpError) as err:
        svc.list(resourceName="people/me").execute()
    assert "personFields" in str(translate_http_error(err.value))


def test_expired_sync_token_by_age_and_on_demand(people, clock):
    state, url = people
    state.seed([person(1)])
    conn = GooglePeopleContacts.for_emulator(url)
    _, cursor, _ = drain(conn, None)
    clock.t += 6 * 86400
    _, cursor, _ = drain(conn, cursor)  # younger than 7 days: accepted
    clock.t += 7 * 86400 + 1
    with pytest.raises(CursorExpired) as err:
        conn.list_changes(cursor)
    assert "Sync token is expired" in err.value.message

    _, fresh, _ = drain(conn, None)
    state.expire_sync_tokens()
    with pytest.raises(CursorExpired):
        conn.list_changes(fresh)
    records, _, _ = drain(conn, None)
    assert len(records) == 1


def test_wire_shape_of_expired_token(people):
    state, url = people
    state.expire_sync_tokens()
    state.inject_fault("expired_token", "list")
    resp = httpx.get(url + "v1/people/me/connections", params={"personFields": "names", "syncToken": "x"},
                     headers={"Authorization": "Bearer emulator-token"})
    body = resp.json()["error"]
    assert resp.status_code == 400 and body["status"] == "FAILED_PRECONDITION"
    assert body["details"][0]["reason"] == "EXPIRED_SYNC_TOKEN"


def test_write_visibility_lag(people, clock):
    state, url = people
    state.configure(write_visibility_lag=60)
    conn = GooglePeopleContacts.for_emulator(url)
    _, cursor, _ = drain(conn, None)
    created = conn.create_many([WriteRequest(key="a", content=Contact(given_name="Lagging"))])[0].record
    assert conn.get(created.external_id).content.given_name == "Lagging"  # reads are immediate
    records, cursor2, _ = drain(conn, cursor)
    assert records == []
    clock.t += 61
    records, _, _ = drain(conn, cursor2)
    assert [r.external_id for r in records] == [created.external_id]


@pytest.mark.parametrize(
    "kind, error_class",
    [
        ("429", RateLimited),
        ("403_rate", RateLimited),
        ("500", Transient),
        ("503", Transient),
        ("401", AuthExpired),
        ("expired_token", CursorExpired),
    ],
)
def test_injected_faults_map_to_recovery_classes(people, kind, error_class):
    state, url = people
    state.seed([person(1)])
    conn = GooglePeopleContacts.for_emulator(url, token="emulator-token")
    state.inject_fault(kind, "list", retry_after=7 if kind == "429" else None)
    with pytest.raises(error_class) as err:
        conn.list_changes(None)
    assert type(err.value) is error_class
    if kind == "429":
        assert err.value.retry_after == 7
    assert len(conn.list_changes(None).records) == 1  # one fault, then normal service
    assert conn.calls_made == 2


def test_faults_through_admin_http_and_stats(people):
    state, url = people
    conn = GooglePeopleContacts.for_emulator(url)
    r = httpx.post(url + "_emulator/faults", json={"kind": "500", "op": "create", "count": 2})
    assert r.status_code == 200
    results = conn.create_many([WriteRequest(key="a", content=Contact(given_name="A"))])
    assert isinstance(results[0].error, Transient)
    assert isinstance(conn.create_many([WriteRequest(key="a", content=Contact(given_name="A"))])[0].error, Transient)
    assert conn.create_many([WriteRequest(key="a", content=Contact(given_name="A"))])[0].record is not None
    stats = httpx.get(url + "_emulator/stats").json()
    assert stats["requests"]["people.batchCreateContacts"] == 3 and stats["faults_served"] == 2
    assert httpx.post(url + "_emulator/faults", json={"kind": "nope"}).status_code == 400


def test_connection_refused_is_transient():
    conn = GooglePeopleContacts.for_emulator(f"http://127.0.0.1:{free_port()}/", token="emulator-token")
    with pytest.raises(Transient):
        conn.list_changes(None)


def test_stale_etag_is_precondition_failed(people):
    state, url = people
    [name] = state.seed([person(1)])
    conn = GooglePeopleContacts.for_emulator(url)
    seen = conn.get(name)
    state.user_edit(name, {"biographies": [{"value": "edited in Gmail"}]})
    [res] = conn.update_many([WriteRequest(key="u", external_id=name, etag=seen.etag, content=Contact(given_name="Mine"))])
    assert isinstance(res.error, PreconditionFailed)
    assert state.person(name)["names"][0]["givenName"] == "Given1"

    fresh = conn.get(name)
    state.inject_fault("stale_etag", "update")  # the race the local check cannot see
    [res] = conn.update_many([WriteRequest(key="u", external_id=name, etag=fresh.etag, content=Contact(given_name="Mine"))])
    assert isinstance(res.error, PreconditionFailed) and "etag" in res.error.message

    svc = raw_service(url).people()
    with pytest.raises(HttpError) as err:
        svc.updateContact(resourceName=name, updatePersonFields="names",
                          body={"etag": seen.etag, "names": [{"givenName": "X"}]}).execute()
    assert isinstance(translate_http_error(err.value), PreconditionFailed)


@pytest.mark.parametrize("mode", ["whole_request", "per_item"])
def test_one_stale_item_does_not_block_the_batch(people, mode):
    state, url = people
    state.configure(batch_error_mode=mode)
    names = state.seed([person(1), person(2)])
    conn = GooglePeopleContacts.for_emulator(url)
    etags = {n: conn.get(n).etag for n in names}
    # whole_request: the batch fails, then the per-item retry of the first item fails again.
    state.inject_fault("stale_etag", "update", count=2 if mode == "whole_request" else 1, scope="item")
    before = conn.calls_made
    results = conn.update_many([
        WriteRequest(key=n, external_id=n, etag=etags[n], content=Contact(given_name=f"Upd{i}")) for i, n in enumerate(names)
    ])
    assert isinstance(results[0].error, PreconditionFailed)
    assert results[1].error is None and results[1].record.content.given_name == "Upd1"
    assert state.person(names[1])["names"][0]["givenName"] == "Upd1"
    assert state.person(names[0])["names"][0]["givenName"] == "Given1"
    # batchGet + batchUpdate (+ two single updates after a whole-request failure)
    assert conn.calls_made - before == (4 if mode == "whole_request" else 2)


def test_rate_limit_inside_batch_response_is_caught(people):
    """A per-item 429 comes back in a 200 body: the client library raises nothing."""
    state, url = people
    state.configure(batch_error_mode="per_item")
    conn = GooglePeopleContacts.for_emulator(url)
    state.inject_fault("429", "create", scope="item")
    results = conn.create_many([WriteRequest(key=str(i), content=Contact(given_name=f"N{i}")) for i in range(3)])
    assert isinstance(results[0].error, RateLimited)
    assert [r.record.content.given_name for r in results[1:]] == ["N1", "N2"]
    assert conn.calls_made == 1


def test_request_level_rate_limit_stops_the_run(people):
    state, url = people
    conn = GooglePeopleContacts.for_emulator(url)
    state.inject_fault("429", "create", retry_after=3)
    results = conn.create_many([WriteRequest(key=str(i), content=Contact(given_name=f"N{i}")) for i in range(250)])
    assert len(results) == 250 and all(isinstance(r.error, RateLimited) and r.error.retry_after == 3 for r in results)
    assert conn.calls_made == 1 and state.all_persons() == []


def test_create_update_delete_round_trip_preserves_fields_we_do_not_sync(people):
    state, url = people
    [seeded] = state.seed([{
        "names": [{"givenName": "Ann", "middleName": "Q", "familyName": "Lee"}],
        "emailAddresses": [{"value": "ann@work.example", "type": "work"}, {"value": "ann@home.example", "type": "home"}],
        "organizations": [{"name": "Acme", "title": "CTO"}, {"name": "Board Co", "title": "Advisor"}],
        "clientData": [{"key": "otherApp", "value": "keep"}],
        "urls": [{"value": "https://ann.example"}],
    }])
    conn = GooglePeopleContacts.for_emulator(url)
    created = conn.create_many([
        WriteRequest(key=f"c{i}", marker=f"m{i}", content=Contact(
            given_name=f"G{i}", family_name="F", emails=[f"g{i}@x.example"], phones=["+1 555 0100"],
            company="Initech", job_title="Dev", notes="hello"))
        for i in range(205)
    ])
    assert conn.calls_made == 2 and all(r.record for r in created)
    rec = conn.get(created[0].record.external_id)
    assert rec.content == Contact(given_name="G0", family_name="F", emails=["g0@x.example"], phones=["+1 555 0100"],
                                  company="Initech", job_title="Dev", notes="hello")

    ann = conn.get(seeded)
    # the fields the merge left alone travel in `keep`: People keeps them as they are
    [res] = conn.update_many([WriteRequest(key="u", external_id=seeded, etag=ann.etag, content=Contact(
        given_name="Anne", family_name="Lee", emails=["ann@work.example", "anne@new.example"],
        company="Acme Corp", job_title="CTO"), keep=("middle_name", "websites"))])
    assert res.error is None and res.record.content.given_name == "Anne"
    raw = state.person(seeded)
    assert raw["names"][0]["middleName"] == "Q"
    assert [(e["value"], e.get("type")) for e in raw["emailAddresses"]] == [("ann@work.example", "work"), ("anne@new.example", None)]
    assert [o["name"] for o in raw["organizations"]] == ["Acme Corp", "Board Co"]
    assert raw["clientData"] == [{"key": "otherApp", "value": "keep", "metadata": raw["clientData"][0]["metadata"]}]
    assert raw["urls"][0]["value"] == "https://ann.example"

    gone = created[1].record.external_id
    state.user_delete(gone)
    targets = [seeded, gone, created[2].record.external_id]
    deleted = conn.delete_many([WriteRequest(key=t, external_id=t) for t in targets])
    assert all(r.error is None and r.record.deleted for r in deleted)
    assert state.person(seeded) is None and state.person(targets[2]) is None
    with pytest.raises(NotFound):
        conn.get(seeded)

    [missing] = conn.update_many([WriteRequest(key="x", external_id=gone, content=Contact(given_name="Z"))])
    assert isinstance(missing.error, NotFound)


def test_find_by_marker_scans_pages(people):
    state, url = people
    state.seed([person(i) for i in range(7)])
    conn = GooglePeopleContacts.for_emulator(url, page_size=3)
    [made] = conn.create_many([WriteRequest(key="k", marker="action-42", content=Contact(given_name="Marked"))])
    before = conn.calls_made
    found = conn.find_by_marker("action-42")
    assert found is not None and found.external_id == made.record.external_id
    assert conn.calls_made - before == 1  # a scan reads the largest pages, whatever the delta's size
    assert conn.find_by_marker("action-43") is None
    # An update keeps the marker; it lives in clientData, not in the Contact.
    conn.update_many([WriteRequest(key="u", external_id=found.external_id, etag=found.etag, content=Contact(given_name="M2"))])
    assert conn.find_by_marker("action-42").content.given_name == "M2"


def test_malformed_person_data(people):
    state, url = people
    svc = raw_service(url).people()
    with pytest.raises(HttpError) as err:
        svc.createContact(body={"names": [{"givenName": "A"}, {"givenName": "B"}]}).execute()
    translated = translate_http_error(err.value)
    assert isinstance(translated, ValidationRejected)
    assert translated.field == "names" and "only one value" in translated.message
    with pytest.raises(HttpError) as err:
        svc.createContact(body={"nickName": [{"value": "x"}]}).execute()
    assert isinstance(translate_http_error(err.value), ValidationRejected)

    [bad] = state.seed([{"names": [{"givenName": "A"}, {"givenName": "B"}]}], validate=False)
    rec = GooglePeopleContacts.for_emulator(url).get(bad)
    assert rec.content.given_name == "A" and rec.problems and "names" in rec.problems[0]


def test_previous_resource_names_after_relink(people):
    state, url = people
    [name] = state.seed([person(1)])
    conn = GooglePeopleContacts.for_emulator(url)
    _, cursor, _ = drain(conn, None)
    new_name = state.relink(name)
    records, _, _ = drain(conn, cursor)
    assert [(r.external_id, r.previous_ids) for r in records] == [(new_name, (name,))]
    full, _, _ = drain(conn, None)
    assert [r.external_id for r in full] == [new_name]


def test_token_refresh_and_reauth(people):
    state, url = people
    state.seed([person(1)])
    assert httpx.get(url + "v1/people/me/connections", params={"personFields": "names"}).status_code == 401

    creds = Credentials(token=None, refresh_token="rt-1", client_id="cid", client_secret="sec", token_uri=url + "token")
    conn = GooglePeopleContacts(url, creds)
    assert len(conn.list_changes(None).records) == 1
    assert creds.token.startswith("ya29.emu.") and creds.expiry is not None
    assert state.requests["oauth.token"] == 1

    state.expire_access_tokens()  # a 401 from the API: google-auth refreshes once and retries
    assert len(conn.list_changes(None).records) == 1
    assert state.requests["oauth.token"] == 2
    assert conn.calls_made == 3  # two lists plus the replay after 401; token calls not counted

    state.revoke_refresh_token("rt-1")
    state.expire_access_tokens()
    with pytest.raises(ReauthRequired):
        conn.list_changes(None)


def test_slow_write_times_out_but_lands_and_marker_finds_it(people):
    """The crash-after-write case: the client gives up, the contact exists anyway."""
    state, url = people
    state.configure(latency={"create": 0.5}, latency_phase="after")
    conn = GooglePeopleContacts.for_emulator(url, timeout=0.2)
    [res] = conn.create_many([WriteRequest(key="k", marker="crash-1", content=Contact(given_name="Slow"))])
    assert isinstance(res.error, Transient)
    state.configure(latency={})
    found = GooglePeopleContacts.for_emulator(url).find_by_marker("crash-1")
    assert found is not None and found.content.given_name == "Slow"


def test_admin_http_seed_edit_delete_and_clock(people):
    state, url = people
    names = httpx.post(url + "_emulator/seed", json={"persons": [person(1), person(2)]}).json()["resourceNames"]
    conn = GooglePeopleContacts.for_emulator(url)
    _, cursor, _ = drain(conn, None)
    assert httpx.post(url + "_emulator/user_edit", json={"resourceName": names[0], "person": {"names": [{"givenName": "Ed"}]}}).status_code == 200
    assert httpx.post(url + "_emulator/user_delete", json={"resourceName": names[1]}).status_code == 200
    records, cursor, _ = drain(conn, cursor)
    assert {(r.external_id, r.deleted) for r in records} == {(names[0], False), (names[1], True)}
    assert httpx.post(url + "_emulator/clock/advance", json={"seconds": 8 * 86400}).status_code == 200
    with pytest.raises(CursorExpired):
        conn.list_changes(cursor)
    assert httpx.post(url + "_emulator/user_delete", json={"resourceName": "people/c1"}).status_code == 400


def test_updating_many_contacts_survives_the_clients_long_url_override(people):
    """Over ~45 names, the client sends people:batchGet as a POST with
    X-HTTP-Method-Override: GET; the real front end (and the emulator) accept it."""
    state, base = people
    names = state.seed([{"names": [{"givenName": f"P{i}", "familyName": "Long"}]} for i in range(120)])
    conn = GooglePeopleContacts.for_emulator(base, token="emulator-token")
    reqs = [WriteRequest(key=f"k{i}", external_id=n, content=Contact(given_name=f"P{i}", family_name="Longer"))
            for i, n in enumerate(names)]
    results = conn.update_many(reqs)
    assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
    assert all(state.person(n)["names"][0]["familyName"] == "Longer" for n in names)


def test_find_by_markers_costs_one_listing_however_many_markers(people):
    state, url = people
    state.seed([person(i) for i in range(1200)])
    conn = GooglePeopleContacts.for_emulator(url, page_size=3)
    made = conn.create_many([WriteRequest(key=f"k{i}", marker=f"m{i}", content=Contact(given_name=f"M{i}")) for i in range(5)])
    assert all(r.error is None for r in made)
    lists_before = state.requests["people.connections.list"]
    beats = []
    found = conn.find_by_markers(["m0", "m2", "m4", "m1", "m3", "never-made"], heartbeat=lambda: beats.append(1))
    assert {m: r.external_id for m, r in found.items()} == {f"m{i}": made[i].record.external_id for i in range(5)}
    assert found["m2"].content.given_name == "M2"
    # 1,205 contacts: one listing of 2 pages of 1,000 for all six markers, one heartbeat a page.
    assert state.requests["people.connections.list"] - lists_before == 2 and len(beats) == 2
    assert conn.find_by_markers([]) == {}


def test_find_by_markers_stops_when_all_are_found(people):
    state, url = people
    conn = GooglePeopleContacts.for_emulator(url, page_size=2)
    [made] = conn.create_many([WriteRequest(key="k", marker="first", content=Contact(given_name="F"))])
    state.seed([person(i) for i in range(1500)])  # listed after ours (oldest change first)
    before = state.requests["people.connections.list"]
    assert conn.find_by_markers(["first"])["first"].external_id == made.record.external_id
    assert state.requests["people.connections.list"] - before == 1


def test_an_untranslatable_person_is_a_problem_record_and_its_page_goes_on(people):
    state, url = people
    [good] = state.seed([person(1)])
    [bad] = state.seed([{"names": ["Secret Person"], "emailAddresses": [{"value": "secret@example.com"}]}], validate=False)
    records, cursor, _ = drain(GooglePeopleContacts.for_emulator(url), None)
    by_id = {r.external_id: r for r in records}
    assert cursor and by_id[good].content.given_name == "Given1"
    assert by_id[bad].content is None and not by_id[bad].deleted
    assert by_id[bad].problems == ("the record could not be translated (AttributeError)",)


def test_translation_problems_name_fields_never_values():
    from connectors.google_people import person_to_record

    rec = person_to_record({"resourceName": "people/c1", "etag": {"secret@example.com": 1},
                            "names": [{"givenName": "Ann"}]})
    assert rec.external_id == "people/c1" and rec.content is None
    assert rec.problems == ("etag could not be read (string_type)",)
    assert person_to_record("not a person").problems == ("the record could not be translated (AttributeError)",)


def test_malformed_requests_fail_alone(people):
    state, url = people
    [name] = state.seed([person(1)])
    conn = GooglePeopleContacts.for_emulator(url)
    created = conn.create_many([WriteRequest(key="no-contact"), WriteRequest(key="ok", content=Contact(given_name="A"))])
    assert [type(r.error).__name__ for r in created] == ["Fatal", "NoneType"]
    updated = conn.update_many([WriteRequest(key="ok", external_id=name, content=Contact(given_name="B")),
                                WriteRequest(key="no-id", content=Contact(given_name="C"))])
    assert [(r.key, type(r.error).__name__) for r in updated] == [("ok", "NoneType"), ("no-id", "Fatal")]
    deleted = conn.delete_many([WriteRequest(key="no-id"), WriteRequest(key="ok", external_id=name)])
    assert [(r.key, type(r.error).__name__) for r in deleted] == [("no-id", "Fatal"), ("ok", "NoneType")]
    assert state.person(name) is None


def test_lone_surrogates_round_trip_without_a_server_error(people):
    state, url = people
    conn = GooglePeopleContacts.for_emulator(url)
    [res] = conn.create_many([WriteRequest(key="s", content=Contact(given_name="An\ud800n", emails=["ann@example.com"]))])
    assert res.error is None and res.record.content.given_name == "An\ud800n"
    [rec], _, _ = drain(conn, None)
    assert rec.content.given_name == "An\ud800n"  # the planner's contact_problems quarantines it
