"""GraphContacts against the Graph emulator over real HTTP (uvicorn on a free port).

Each test steers the emulator through `GraphState` (replays, expired tokens,
faults, moves, latency) and checks what the connector makes of it.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from models.errors import (
    AuthExpired,
    CursorExpired,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Transient,
    ValidationRejected,
)
from connectors.graph_contacts import GraphContacts, _dedupe
from connectors.protocols import WriteRequest
from emulators.graph import DEFAULT_FOLDER_ID, GraphState
from emulators.server import serve
from tests.graph_emulator import TOKEN, running_graph
from models.contact import Contact



@pytest.fixture
def graph():
    with running_graph(seed=7) as running:
        yield running


@pytest.fixture
def conn(graph):
    state, base = graph
    c = GraphContacts(base, lambda: TOKEN, page_size=10)
    yield c
    c.close()


def _people(n: int, prefix: str = "p") -> list[dict]:
    return [
        {
            "givenName": f"Given{i}",
            "surname": f"{prefix}{i}",
            "emailAddresses": [{"address": f"{prefix}{i}@example.test", "name": f"Person {i}"}],
            "businessPhones": [f"+1 555 01{i:02d}"],
        }
        for i in range(n)
    ]


def _walk(conn: GraphContacts, cursor: str | None):
    pages = []
    token = None
    while True:
        page = conn.list_changes(cursor, token)
        pages.append(page)
        if page.next_page:
            token = page.next_page
            continue
        return pages, page.cursor


def _raw(base: str, **headers) -> httpx.Client:
    return httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}", **headers})


# --------------------------------------------------------------------- delta reads


def test_full_listing_pages_with_links_as_given_and_ends_with_cursor(graph, conn):
    state, base = graph
    ids = state.seed(_people(25))
    pages, cursor = _walk(conn, None)
    assert [len(p.records) for p in pages] == [10, 10, 5]
    for p in pages[:-1]:
        assert p.cursor is None and "$skiptoken=" in p.next_page
        assert p.next_page.startswith(base.rstrip("/") + "/v1.0/me/contacts/delta?")
    assert "$deltatoken=" in cursor
    got = {r.external_id: r for p in pages for r in p.records}
    assert set(got) == set(ids)  # immutable ids, because the connector prefers them
    rec = got[ids[3]]
    assert rec.content.family_name == "p3" and rec.content.email_addresses() == ("p3@example.test",)
    assert rec.content.phone_numbers() == ("+1 555 0103",)
    assert rec.etag.startswith('W/"') and rec.updated_at is not None
    assert conn.calls_made == 3


def test_incremental_round_returns_only_changes_and_removed_items(graph, conn):
    state, _ = graph
    ids = state.seed(_people(5))
    _, cursor = _walk(conn, None)
    state.user_edit(ids[0], {"jobTitle": "CTO"})
    state.user_delete(ids[1])
    [new_id] = state.seed(_people(1, prefix="new"))
    pages, cursor2 = _walk(conn, cursor)
    recs = {r.external_id: r for p in pages for r in p.records}
    assert set(recs) == {ids[0], ids[1], new_id}
    assert recs[ids[0]].content.job_title == "CTO"
    assert recs[ids[1]].deleted and recs[ids[1]].content is None
    assert recs[new_id].content.family_name == "new0"
    # Nothing changed since: an empty round with a fresh cursor.
    pages, cursor3 = _walk(conn, cursor2)
    assert [r for p in pages for r in p.records] == [] and cursor3 and cursor3 != cursor2


def test_replays_inside_a_page_are_deduplicated_and_empty_pages_followed(graph, conn):
    state, _ = graph
    ids = state.seed(_people(12))
    state.delta_replays = 4
    state.replay_mode = "adjacent"
    state.delta_empty_pages = 2
    pages, cursor = _walk(conn, None)
    assert cursor
    assert any(not p.records and p.next_page for p in pages), "an empty page with a nextLink was served"
    for p in pages:
        page_ids = [r.external_id for r in p.records]
        assert len(page_ids) == len(set(page_ids))
    # Across pages a replay may reach the caller again; read_round collapses the round.
    records, cursor2 = conn.read_round(None)
    assert sorted(r.external_id for r in records) == sorted(ids)
    assert "$deltatoken=" in cursor2


def test_update_then_delete_in_one_round_yields_the_delete(graph, conn):
    state, _ = graph
    ids = state.seed(_people(3))
    _, cursor = _walk(conn, None)
    state.coalesce = False  # every change event is served, in order: real replays
    state.user_edit(ids[0], {"surname": "first"})
    state.user_edit(ids[0], {"surname": "second"})
    state.user_delete(ids[0])
    state.user_edit(ids[2], {"surname": "old"})
    state.user_edit(ids[2], {"surname": "latest"})
    page = conn.list_changes(cursor)
    assert page.cursor  # one page holds the whole round (page size 10)
    recs = {r.external_id: r for r in page.records}
    assert len(page.records) == 2
    assert recs[ids[0]].deleted
    assert recs[ids[2]].content.family_name == "latest"


def test_dedupe_rejects_stale_replays():
    v1 = {"id": "a", "changeKey": "k1", "lastModifiedDateTime": "2024-01-01T00:00:01Z", "surname": "v1"}
    v2 = {"id": "a", "changeKey": "k2", "lastModifiedDateTime": "2024-01-01T00:00:05Z", "surname": "v2"}
    gone = {"id": "a", "@removed": {"reason": "deleted"}}
    assert _dedupe([v2, v1]) == [v2]  # an older version replayed late does not win
    assert _dedupe([v1, gone, v1]) == [gone]  # a replay does not resurrect a deleted item
    restored = {"id": "a", "changeKey": "k3", "lastModifiedDateTime": "2024-01-01T00:00:09Z"}
    assert _dedupe([v1, gone, restored]) == [restored]  # a genuinely new version does


@pytest.mark.parametrize(
    "status, code",
    [(410, "syncStateNotFound"), (400, "SyncStateNotFound"), (404, "SyncStateNotFound"), (410, "resyncRequired")],
)
def test_expired_delta_token_raises_cursor_expired(graph, conn, status, code):
    state, _ = graph
    state.seed(_people(15))
    first = conn.list_changes(None)
    assert first.next_page
    _, cursor = _walk(conn, None)
    state.expire_delta_tokens(status=status, code=code)
    with pytest.raises(CursorExpired):
        conn.list_changes(cursor)
    with pytest.raises(CursorExpired):  # a nextLink of the dead round too
        conn.list_changes(None, first.next_page)
    # The cure is a full resync, which works.
    _, fresh = _walk(conn, None)
    assert fresh


# --------------------------------------------------------------------- errors


def test_throttled_read_raises_rate_limited_with_retry_after(graph, conn):
    state, _ = graph
    state.seed(_people(2))
    state.inject_fault(429, retry_after=7, path=r"/contacts/delta")
    with pytest.raises(RateLimited) as info:
        conn.list_changes(None)
    assert info.value.retry_after == 7
    assert conn.list_changes(None).cursor  # the fault was one-shot


def test_server_errors_timeouts_and_bad_tokens(graph):
    state, base = graph
    state.seed(_people(1))
    c = GraphContacts(base, lambda: TOKEN, timeout=0.3)
    state.inject_fault(503)
    with pytest.raises(Transient) as info:
        c.list_changes(None)
    assert not isinstance(info.value, RateLimited)
    state.inject_fault(None, delay=1.0)
    with pytest.raises(Transient):
        c.list_changes(None)
    c.close()
    bad = GraphContacts(base, lambda: "revoked-token")
    with pytest.raises(AuthExpired):
        bad.list_changes(None)
    with pytest.raises(NotFound):
        GraphContacts(base, lambda: TOKEN).get("AAkALgdoesnotexist")
    bad.close()


def test_emulator_rejects_requests_without_a_known_bearer(graph):
    _, base = graph
    with httpx.Client(base_url=base) as c:
        assert c.get("v1.0/me/contacts").status_code == 401
        r = c.get("v1.0/me/contacts", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"


# --------------------------------------------------------------------- writes


def _creates(n: int, prefix: str = "c") -> list[WriteRequest]:
    return [
        WriteRequest(
            key=f"k{i}",
            content=Contact(given_name=f"G{i}", family_name=f"{prefix}{i}", emails=[f"{prefix}{i}@example.test"]),
            marker=f"mk-{prefix}{i}",
        )
        for i in range(n)
    ]


def test_create_many_200_never_exceeds_four_requests_in_flight(graph, conn):
    state, _ = graph
    state.latency = 0.03  # makes overlapping requests visible to the emulator
    results = conn.create_many(_creates(200))
    assert [r.key for r in results] == [f"k{i}" for i in range(200)]
    assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
    assert len({r.record.external_id for r in results}) == 200
    stats = state.stats()
    assert stats["live_contacts"] == 200
    assert 2 <= stats["peak_concurrency"] <= 4  # parallel, but within Graph's mailbox limit
    assert stats["throttled"] == 0
    assert conn.calls_made == 10 and stats["by_route"]["POST /$batch"] == 10
    assert abs(sum(r.calls for r in results) - 10) < 1e-6


def test_emulator_enforces_the_four_concurrent_requests_limit(graph):
    state, base = graph
    state.latency = 0.1
    greedy = GraphContacts(base, lambda: TOKEN, max_concurrency=8)
    results = greedy.create_many(_creates(160))
    greedy.close()
    limited = [r for r in results if isinstance(r.error, RateLimited)]
    assert state.stats()["peak_concurrency"] > 4
    assert limited and all(r.error.retry_after == 1 for r in limited)


def test_batch_per_item_errors(graph, conn):
    state, _ = graph
    [a, b] = [r.record for r in conn.create_many(_creates(2))]
    state.user_edit(b.external_id, {"jobTitle": "changed by user"})  # b's etag is now stale
    state.inject_fault(429, where="batch_item", path=r"/contacts/", method="PATCH", retry_after=3)
    state.inject_fault(400, where="batch_item", path=r"/contacts$", method="POST", code="ErrorInvalidArgument")
    results = conn.update_many(
        [
            WriteRequest(key="throttled", external_id=a.external_id, content=a.content, etag=a.etag),
            WriteRequest(key="ok", external_id=a.external_id, content=a.content.model_copy(update={"company": "Acme"}), etag=a.etag),
            WriteRequest(key="stale", external_id=b.external_id, content=b.content, etag=b.etag),
            WriteRequest(key="missing", external_id="AAkALgnothere", content=b.content),
        ]
    )
    by_key = {r.key: r for r in results}
    assert isinstance(by_key["throttled"].error, RateLimited) and by_key["throttled"].error.retry_after == 3
    assert by_key["ok"].error is None and by_key["ok"].record.content.company == "Acme"
    assert isinstance(by_key["stale"].error, PreconditionFailed)
    assert isinstance(by_key["missing"].error, NotFound)
    [rejected] = conn.create_many(_creates(1, prefix="bad"))
    assert isinstance(rejected.error, ValidationRejected)
    deleted = conn.delete_many(
        [WriteRequest(key="d1", external_id=a.external_id), WriteRequest(key="d2", external_id="AAkALgnothere")]
    )
    assert all(r.error is None and r.record.deleted for r in deleted)
    assert state.contact(a.external_id) is None


def test_stale_etag_412_then_reread_and_retry(graph, conn):
    state, _ = graph
    [rec] = [r.record for r in conn.create_many(_creates(1))]
    state.user_edit(rec.external_id, {"personalNotes": "met at the fair"})
    new = rec.content.model_copy(update={"job_title": "Buyer"})
    [res] = conn.update_many([WriteRequest(key="u", external_id=rec.external_id, content=new, etag=rec.etag)])
    assert isinstance(res.error, PreconditionFailed)
    current = conn.get(rec.external_id)
    assert current.content.notes == "met at the fair" and current.etag != rec.etag
    merged = current.content.model_copy(update={"job_title": "Buyer"})
    [res] = conn.update_many([WriteRequest(key="u", external_id=rec.external_id, content=merged, etag=current.etag)])
    assert res.error is None
    assert state.contact(rec.external_id)["jobTitle"] == "Buyer"
    assert state.contact(rec.external_id)["personalNotes"] == "met at the fair"


def test_delete_with_stale_etag_is_refused(graph, conn):
    state, _ = graph
    [rec] = [r.record for r in conn.create_many(_creates(1))]
    state.user_edit(rec.external_id, {"jobTitle": "x"})
    [res] = conn.delete_many([WriteRequest(key="d", external_id=rec.external_id, etag=rec.etag)])
    assert isinstance(res.error, PreconditionFailed)
    assert state.contact(rec.external_id) is not None


def test_immutable_id_survives_a_move_and_regular_id_does_not(graph, conn):
    state, base = graph
    [rec] = [r.record for r in conn.create_many(_creates(1))]
    _, cursor = _walk(conn, None)
    old_rest = state.ids_of(rec.external_id)["rest_id"]
    archive = state.add_folder("Archive")
    new_rest = state.move(rec.external_id, archive)
    assert new_rest != old_rest
    assert conn.get(rec.external_id).external_id == rec.external_id
    with _raw(base) as plain:
        assert plain.get(f"/me/contacts/{old_rest}").status_code == 404
        assert plain.get(f"/me/contacts/{new_rest}").json()["id"] == new_rest
    # Leaving the synced folder is a removal; coming back is the same id again.
    page = conn.list_changes(cursor)
    assert [(r.external_id, r.deleted) for r in page.records] == [(rec.external_id, True)]
    state.move(rec.external_id, DEFAULT_FOLDER_ID)
    page = conn.list_changes(page.cursor)
    assert [(r.external_id, r.deleted) for r in page.records] == [(rec.external_id, False)]


def test_find_by_marker_uses_the_extended_property(graph, conn):
    state, _ = graph
    reqs = _creates(3)
    reqs[1].marker = "it's-a-marker"
    recs = [r.record for r in conn.create_many(reqs)]
    found = conn.find_by_marker("it's-a-marker")
    assert found is not None and found.external_id == recs[1].external_id
    assert conn.find_by_marker("mk-c2").external_id == recs[2].external_id
    assert conn.find_by_marker("never-written") is None


def test_phones_keep_their_slot_and_new_ones_go_to_business(graph, conn):
    """Slots follow types; an untyped number (from a side without types) keeps the slot it has."""
    state, _ = graph
    [iid] = state.seed(
        [{"givenName": "M", "mobilePhone": "+1 555 9000", "homePhones": ["+1 555 8000"], "businessPhones": ["+1 555 7000"]}]
    )
    rec = conn.get(iid)
    assert [(p.number, p.type) for p in rec.content.phones] == [
        ("+1 555 7000", "work"), ("+1 555 8000", "home"), ("+1 555 9000", "mobile")]
    untyped = rec.content.phone_numbers()  # as a platform without types reports them
    updated = rec.content.model_copy(update={"phones": untyped + ("+1 555 6000",)})
    updated = type(updated).model_validate(updated.model_dump())
    [res] = conn.update_many([WriteRequest(key="p", external_id=iid, content=updated, etag=rec.etag)])
    assert res.error is None
    stored = state.contact(iid)
    assert stored["mobilePhone"] == "+1 555 9000"
    assert stored["homePhones"] == ["+1 555 8000"]
    assert sorted(stored["businessPhones"]) == ["+1 555 6000", "+1 555 7000"]


# --------------------------------------------------------------------- $batch rules


def test_batch_limits_dependencies_and_shuffled_answers(graph):
    state, base = graph
    ids = state.seed(_people(20))
    with _raw(base) as c:
        too_many = [{"id": str(i), "method": "GET", "url": f"/me/contacts/{ids[0]}"} for i in range(21)]
        assert c.post("/$batch", json={"requests": too_many}).status_code == 400
        reqs = [{"id": str(i), "method": "GET", "url": f"/me/contacts/{iid}"} for i, iid in enumerate(ids[:19])]
        reqs.append({"id": "dep", "method": "GET", "url": "/me/contacts", "dependsOn": ["missing-item"]})
        reqs.append({"id": "missing-item", "method": "GET", "url": "/me/contacts/AAkALgnope"})
        reqs = reqs[:18] + reqs[19:]  # keep 20 requests
        answers = c.post("/$batch", json={"requests": reqs}).json()["responses"]
    assert len(answers) == 20
    assert [a["id"] for a in answers] != [r["id"] for r in reqs]  # any order (seeded shuffle)
    by_id = {a["id"]: a for a in answers}
    assert by_id["missing-item"]["status"] == 404 and by_id["dep"]["status"] == 424
    assert by_id["0"]["status"] == 200


# --------------------------------------------------------------------- subscriptions


@pytest.fixture
def receiver():
    """A tiny webhook receiver: answers the validation handshake, records notifications."""
    seen: dict[str, list] = {"validations": [], "notifications": []}
    lock = threading.Lock()
    app = FastAPI()
    mode = {"echo": True}

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            with lock:
                seen["validations"].append(token)
            return PlainTextResponse(token if mode["echo"] else "wrong")
        with lock:
            seen["notifications"].append(await request.json())
        return JSONResponse({}, status_code=202)

    server = serve(app)
    yield server.base_url.rstrip("/") + "/hook", seen, mode
    server.stop()


def test_subscription_lifecycle_with_validation_handshake(graph, conn, receiver):
    state, base = graph
    url, seen, mode = receiver
    sub = conn.create_subscription(url, "s3cret-state", minutes=60)
    assert len(seen["validations"]) == 1 and sub["clientState"] == "s3cret-state"
    assert state.subscriptions[sub["id"]]["notificationUrl"] == url
    renewed = conn.renew_subscription(sub["id"], minutes=10_000)
    assert renewed["expirationDateTime"] > sub["expirationDateTime"]
    with pytest.raises(ValidationRejected):
        conn.renew_subscription(sub["id"], minutes=10_081)  # beyond 10,080 minutes

    [iid] = state.seed(_people(1))
    assert state.fire_notification(sub["id"], iid, "created") == 202
    [note] = seen["notifications"][0]["value"]
    assert note["clientState"] == "s3cret-state" and note["subscriptionId"] == sub["id"]
    assert note["resourceData"]["id"] == iid and note["changeType"] == "created"

    conn.delete_subscription(sub["id"])
    with _raw(base) as c:
        assert c.get(f"/subscriptions/{sub['id']}").status_code == 404
    conn.delete_subscription(sub["id"])  # already gone is fine

    mode["echo"] = False
    with pytest.raises(ValidationRejected):
        conn.create_subscription(url, "s", minutes=60)
    state.validate_subscriptions = False  # handshake off: the webhook server may not exist yet
    assert conn.create_subscription("http://127.0.0.1:9/nowhere", "s", minutes=60)["id"]


# --------------------------------------------------------------------- admin HTTP API


def test_admin_http_api_steers_the_emulator(graph, conn):
    state, base = graph
    with httpx.Client(base_url=base) as admin:
        ids = admin.post("/_emulator/seed", json={"contacts": _people(3)}).json()["ids"]
        _, cursor = _walk(conn, None)
        admin.post(f"/_emulator/contacts/{ids[0]}/edit", json={"surname": "edited"})
        admin.post(f"/_emulator/contacts/{ids[1]}/delete")
        folder = admin.post("/_emulator/folders", json={"displayName": "Old"}).json()["id"]
        assert admin.post(f"/_emulator/contacts/{ids[2]}/move", json={"folder_id": folder}).json()["rest_id"]
        page = conn.list_changes(cursor)
        assert {(r.external_id, r.deleted) for r in page.records} == {(ids[0], False), (ids[1], True), (ids[2], True)}
        assert admin.post("/_emulator/expire-delta", json={"status": 400, "code": "SyncStateNotFound"}).json()["expired"] >= 1
        with pytest.raises(CursorExpired):
            conn.list_changes(page.cursor)
        admin.post("/_emulator/faults", json={"status": 500, "count": 1})
        with pytest.raises(Transient):
            conn.get(ids[0])
        admin.post("/_emulator/config", json={"request_budget": [2, 60]})
        conn.get(ids[0])
        conn.get(ids[0])
        with pytest.raises(RateLimited) as info:
            conn.get(ids[0])
        assert info.value.retry_after and info.value.retry_after > 50
        stats = admin.get("/_emulator/stats").json()
        assert stats["by_route"]["GET /me/contacts/{id}"] == 4 and stats["throttled"] == 1
        assert all(i not in key for key in stats["by_route"] for i in ids)  # no ids in counters


# --------------------------------------------------------------------- read before write


def _fresh(base: str) -> GraphContacts:
    """A connector as each Temporal activity builds it: new, with nothing remembered."""
    return GraphContacts(base, lambda: TOKEN, page_size=10)


def test_update_from_a_fresh_instance_keeps_phone_slots_and_display_names(graph):
    state, base = graph
    [iid] = state.seed([{
        "givenName": "Mo",
        "mobilePhone": "+1 555 9000",
        "homePhones": ["+1 555 8000"],
        "businessPhones": ["+1 555 7000"],
        "emailAddresses": [{"address": "Mo@Example.test", "name": "Mo (work)"}],
    }])
    reader = _fresh(base)  # the fetch activity
    [rec] = [r for p in _walk(reader, None)[0] for r in p.records]
    reader.close()
    edited = Contact.model_validate({
        **rec.content.model_dump(),
        # the platform reformatted the mobile number and added a phone and an address
        "phones": ["+15559000", "+1 555 8000", "+1 555 7000", "+1 555 6000"],
        "emails": ["mo@example.test", "new@example.test"],
    })
    writer = _fresh(base)  # the write activity, another instance
    [res] = writer.update_many([WriteRequest(key="u", external_id=iid, content=edited, etag=rec.etag)])
    assert res.error is None
    stored = state.contact(iid)
    assert stored["mobilePhone"] == "+15559000"
    assert stored["homePhones"] == ["+1 555 8000"]
    assert sorted(stored["businessPhones"]) == ["+1 555 6000", "+1 555 7000"]
    assert {e["address"]: e["name"] for e in stored["emailAddresses"]} == {
        "mo@example.test": "Mo (work)",  # kept although the platform changed the case
        "new@example.test": "new@example.test",  # a new address is named by itself, as Outlook does
    }
    # Counted honestly: one $batch of reads and one $batch of writes.
    assert writer.calls_made == 2 and res.calls == 2
    assert state.stats()["by_route"]["POST /$batch"] == 2
    writer.close()


def test_update_reads_cost_one_call_per_twenty_targets(graph, conn):
    state, base = graph
    ids = state.seed(_people(45))
    writer = _fresh(base)
    reqs = [WriteRequest(key=f"k{n}", external_id=i, content=Contact(given_name=f"N{n}")) for n, i in enumerate(ids)]
    results = writer.update_many(reqs)
    assert [r.key for r in results] == [r.key for r in reqs] and all(r.error is None for r in results)
    assert writer.calls_made == 6  # 3 chunks x (read + write)
    assert abs(sum(r.calls for r in results) - 6) < 1e-6
    assert state.stats()["by_route"]["GET /me/contacts/{id}"] == 45  # the reads, inside $batch
    writer.close()


def test_stale_etag_is_refused_from_the_read_without_spending_a_write(graph, conn):
    state, base = graph
    [rec] = [r.record for r in conn.create_many(_creates(1))]
    state.user_edit(rec.external_id, {"jobTitle": "changed by user"})
    state.reset_stats()
    [res] = _fresh(base).update_many([WriteRequest(key="s", external_id=rec.external_id, content=rec.content, etag=rec.etag)])
    assert isinstance(res.error, PreconditionFailed)
    assert "PATCH /me/contacts/{id}" not in state.stats()["by_route"]
    assert state.contact(rec.external_id)["jobTitle"] == "changed by user"


def test_a_throttled_read_fails_only_its_item(graph, conn):
    state, base = graph
    ids = state.seed(_people(2))
    state.inject_fault(429, where="batch_item", method="GET", path=r"/contacts/", retry_after=4)
    results = _fresh(base).update_many(
        [WriteRequest(key=f"k{n}", external_id=i, content=Contact(given_name="Z")) for n, i in enumerate(ids)]
    )
    errors = [r.error for r in results]
    assert sum(isinstance(e, RateLimited) for e in errors) == 1 and errors.count(None) == 1


def test_malformed_requests_fail_alone(graph, conn):
    state, _ = graph
    [iid] = state.seed(_people(1))
    results = conn.update_many([
        WriteRequest(key="no-id", content=Contact(given_name="A")),
        WriteRequest(key="ok", external_id=iid, content=Contact(given_name="B")),
        WriteRequest(key="no-contact", external_id=iid),
    ])
    assert [(r.key, type(r.error).__name__) for r in results] == [("no-id", "Fatal"), ("ok", "NoneType"), ("no-contact", "Fatal")]
    assert state.contact(iid)["givenName"] == "B"


def test_graph_holds_three_emails_and_refuses_a_fourth(graph, conn):
    """Outlook has three email slots: the emulator refuses a fourth as Graph does, and
    the connector sends the three `graph_emails` holds (the rest stay on the other
    side: `sync.fields.restore` reads their absence as "cannot hold", not a deletion)."""
    state, base = graph
    with _raw(base) as c:
        r = c.post("/me/contacts", json={"givenName": "Four", "emailAddresses": [
            {"address": f"e{i}@example.test"} for i in range(4)]})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == ("The multi value property EmailAddresses has 4 entries, "
                                                "that exceeds the max allowed value of 3")
        r = c.post("/me/contacts", json={"givenName": "Phones", "businessPhones": ["1", "2", "3"]})
        assert r.status_code == 400 and "BusinessPhones has 3 entries" in r.json()["error"]["message"]
    five = Contact(given_name="Five", emails=[f"e{i}@example.test" for i in (4, 0, 3, 1, 2)])
    [made] = conn.create_many([WriteRequest(key="five", content=five, marker="m5")])
    assert made.error is None
    held = [e["address"] for e in state.contact(made.record.external_id)["emailAddresses"]]
    assert held == ["e0@example.test", "e1@example.test", "e2@example.test"]
    # an update that adds a sixth still sends three, and the same three
    more = five.model_copy(update={"emails": [*five.emails, "a@example.test"]})
    [upd] = conn.update_many([WriteRequest(key="six", external_id=made.record.external_id, content=more)])
    assert upd.error is None
    held = [e["address"] for e in state.contact(made.record.external_id)["emailAddresses"]]
    assert held == ["a@example.test", "e0@example.test", "e1@example.test"]


# --------------------------------------------------------------------- find_by_markers


def test_find_by_markers_up_to_twenty_is_one_batch_of_filters(graph, conn):
    state, base = graph
    state.seed(_people(30))
    made = {r.key: r.record for r in conn.create_many(_creates(19))}
    finder = _fresh(base)
    beats = []
    found = finder.find_by_markers([f"mk-c{i}" for i in range(19)] + ["never-written"], heartbeat=lambda: beats.append(1))
    assert {m: r.external_id for m, r in found.items()} == {f"mk-c{i}": made[f"k{i}"].external_id for i in range(19)}
    assert found["mk-c3"].content.family_name == "c3"
    assert finder.calls_made == 1 and len(beats) == 1
    assert finder.find_by_markers([]) == {} and finder.calls_made == 1
    finder.close()


def test_find_by_markers_beyond_twenty_is_one_listing(graph, conn):
    state, base = graph
    state.seed(_people(1030))  # two listing pages of 1,000
    made = {r.key: r.record for r in conn.create_many(_creates(25))}
    finder = _fresh(base)
    beats = []
    found = finder.find_by_markers([f"mk-c{i}" for i in range(25)] + ["never-written"], heartbeat=lambda: beats.append(1))
    assert {m: r.external_id for m, r in found.items()} == {f"mk-c{i}": made[f"k{i}"].external_id for i in range(25)}
    assert finder.calls_made == 2 and len(beats) == 2  # one call per page, whatever the number of markers
    finder.close()


def test_find_by_markers_raises_what_a_lookup_hit(graph, conn):
    state, _ = graph
    state.inject_fault(429, where="batch_item", method="GET", retry_after=2)
    with pytest.raises(RateLimited):
        conn.find_by_markers(["a", "b"])


# --------------------------------------------------------------------- malformed input


def test_an_untranslatable_contact_is_a_problem_record_and_its_page_goes_on(graph, conn):
    state, _ = graph
    good, bad = state.seed([
        {"givenName": "Good", "emailAddresses": [{"address": "good@example.test"}]},
        {"givenName": "Secret Person", "emailAddresses": 5},  # not a collection
    ])
    pages, cursor = _walk(conn, None)
    records = {r.external_id: r for p in pages for r in p.records}
    assert cursor and records[good].content.given_name == "Good"
    assert records[bad].content is None and not records[bad].deleted
    assert records[bad].problems == ("the record could not be translated (TypeError)",)


def test_translation_problems_never_carry_the_values():
    from connectors.graph_contacts import item_to_record

    rec = item_to_record({"id": 12345, "givenName": "secret@example.test"})
    assert rec.content is None and rec.external_id == ""
    assert rec.problems == ("external_id could not be read (string_type)",)


def test_lone_surrogates_travel_both_ways_without_a_server_error(graph, conn):
    state, base = graph
    broken = Contact(given_name="An\ud800n", emails=["ann@example.test"])
    [res] = conn.create_many([WriteRequest(key="s", content=broken)])
    assert res.error is None and res.record.content.given_name == "An\ud800n"
    assert state.contact(res.record.external_id)["givenName"] == "An\ud800n"
    [rec] = [r for p in _walk(conn, None)[0] for r in p.records]
    assert rec.content.given_name == "An\ud800n"  # the planner's contact_problems quarantines it
    with _raw(base) as c:  # a client sending the escape itself
        r = c.post("/me/contacts", content=b'{"givenName": "\\ud800"}', headers={"Content-Type": "application/json"})
        assert r.status_code == 201 and r.json()["givenName"] == "\ud800"
        assert c.get("/me/contacts").status_code == 200
