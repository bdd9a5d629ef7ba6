"""GraphMail against the Graph emulator's mail surface over real HTTP (uvicorn, httpx).

The shared mail contract runs first; the rest are the Graph-specific behaviours a
mail connector must survive: metadata mode never asking for a body, immutable ids
across moves, expired delta state, replays, and notifications on messages.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from connectors.graph_mail import GraphMail
from emulators.graph import GraphState
from emulators.server import serve
from tests.graph_emulator import TOKEN, running_graph
from models.errors import CursorExpired, NotFound, RateLimited
from models.mail import MailFetchOptions
from tests.mail_contract import BODIES, META, MailContract, content, drain, latest, make_raw

USER = "me@acme.example"


class GraphHarness:
    user = USER

    def __init__(self, state: GraphState, base_url: str, *, page_size: int = 5) -> None:
        self.state = state
        self.base_url = base_url
        self.page_size = page_size
        self._opened: list[GraphMail] = []

    def connector(self, options: MailFetchOptions) -> GraphMail:
        conn = GraphMail(self.base_url, lambda: TOKEN, options=options, page_size=self.page_size)
        self._opened.append(conn)
        return conn

    def deliver(self, raw: bytes, *, sent: bool = False, labels: tuple[str, ...] = ()) -> str:
        return self.state.mail.deliver(raw, folder="sentitems" if sent else "inbox", categories=labels)

    def add_label(self, message_id: str, label: str) -> None:
        self.state.mail.add_category(message_id, label)

    def remove_label(self, message_id: str, label: str) -> None:
        self.state.mail.remove_category(message_id, label)

    def delete(self, message_id: str) -> None:
        self.state.mail.delete(message_id)

    def expire_cursor(self) -> None:
        self.state.expire_delta_tokens()

    def close(self) -> None:
        for c in self._opened:
            c.close()


@pytest.fixture
def graph():
    with running_graph(seed=11) as running:
        yield running


@pytest.fixture
def harness(graph):
    state, base = graph
    h = GraphHarness(state, base)
    yield h
    h.close()


class TestGraphMailContract(MailContract):
    """The shared contract over the emulator; a new GraphMail per round."""

    @pytest.fixture
    def harness(self, graph):
        h = GraphHarness(*graph)
        yield h
        h.close()


# --------------------------------------------------------------------- metadata mode


def _selects(state: GraphState) -> list[list[str]]:
    return [
        [s.strip().lower() for s in entry["query"]["$select"].split(",")]
        for entry in state.request_log
        if "/messages" in entry["path"] and entry["query"].get("$select")
    ]


def test_metadata_mode_never_asks_for_a_body(graph, harness):
    state, _ = graph
    projects = state.mail.add_folder("Projects")
    ids = [harness.deliver(make_raw(body=f"Secret {n}", html=f"<p>Secret {n}</p>")[0]) for n in range(7)]
    opts = MailFetchOptions(bodies=False, folders=("inbox", projects))
    _, cursor = drain(harness.connector(opts), None)
    state.mail.move(ids[0], projects)  # a move makes the connector read the message itself
    state.mail.move(ids[1], "deleteditems")
    records, _ = drain(harness.connector(opts), cursor)
    assert latest(records)[ids[1]].content.folder == "deleteditems"
    selects = _selects(state)
    assert selects and all("body" not in s and "uniquebody" not in s for s in selects)
    assert any(entry["in_batch"] for entry in state.request_log), "the move was read through $batch"
    assert all(content(r).body_text is None for r in records if not r.deleted)
    assert "Secret" not in "".join(r.model_dump_json() for r in records)


def test_bodies_mode_asks_for_the_body_and_converts_html(graph, harness):
    state, _ = graph
    pid = harness.deliver(make_raw(body="plain part", html="<p>Price <b>4711</b> EUR</p>")[0])
    msg = content(latest(drain(harness.connector(BODIES), None)[0])[pid])
    assert msg.body_text is not None and "4711" in msg.body_text and "<b>" not in msg.body_text
    assert any("body" in s for s in _selects(state))


def test_metadata_fields_from_graph_and_headers(graph, harness):
    state, _ = graph
    raw, mid = make_raw(sender="Pat <pat@prospect.example>", to="Me <me@acme.example>, Lee <lee@acme.example>",
                        subject="Pricing", headers={"Cc": "Ops <ops@prospect.example>"})
    pid = harness.deliver(raw, labels=("Blue",))
    msg = content(latest(drain(harness.connector(META), None)[0])[pid])
    graph_msg = state.mail.message(pid)
    assert msg.message_id == mid and msg.provider_thread_id == graph_msg["conversationId"]
    assert [a.email for a in msg.to] == ["me@acme.example", "lee@acme.example"]
    assert [a.email for a in msg.cc] == ["ops@prospect.example"]
    assert msg.labels == ("Blue",) and msg.folder == "inbox" and msg.direction == "received"
    assert msg.problems == ()
    conn = harness.connector(META)
    one = conn.get(pid)
    assert content(one) == msg and conn.calls_made == 2  # the folder names once, then the message
    with pytest.raises(NotFound):
        conn.get("AAkALgNoSuchMessage")


def test_sent_items_thread_headers_come_from_extended_properties(graph, harness):
    """Exchange keeps no internetMessageHeaders on a Sent Items copy; the thread survives."""
    state, _ = graph
    _, root = make_raw(subject="Root")
    reply, _ = make_raw(sender=f"Me <{USER}>", subject="Re: Root", references=f"<older@x.example> <{root}>")
    pid = harness.deliver(reply, sent=True)
    assert "internetMessageHeaders" not in state.mail.message(pid)
    msg = content(latest(drain(harness.connector(META), None)[0])[pid])
    assert msg.references == ("older@x.example", root) and msg.in_reply_to == (root,)
    assert msg.direction == "sent" and msg.problems == ()
    assert content(harness.connector(META).get(pid)).references == msg.references


# --------------------------------------------------------------------- ids and moves


@pytest.mark.parametrize("order", ["source_first", "destination_first"])
def test_immutable_id_survives_a_move_between_followed_folders(graph, harness, order):
    state, base = graph
    projects = state.mail.add_folder("Projects")
    folders = ("inbox", projects) if order == "source_first" else (projects, "inbox")
    opts = MailFetchOptions(folders=folders)
    pid = harness.deliver(make_raw(subject="Filed")[0])
    first, cursor = drain(harness.connector(opts), None)
    assert content(latest(first)[pid]).folder == "inbox"
    rest_before = state.mail.ids_of(pid)["rest_id"]
    state.mail.move(pid, projects)
    assert state.mail.ids_of(pid)["rest_id"] != rest_before  # without ImmutableId the id would change
    records, cursor = drain(harness.connector(opts), cursor)
    rec = latest(records)[pid]
    assert not rec.deleted and content(rec).folder == projects
    assert all(not r.deleted for r in records)
    # and back again
    state.mail.move(pid, "inbox")
    rec = latest(drain(harness.connector(opts), cursor)[0])[pid]
    assert not rec.deleted and content(rec).folder == "inbox"


def test_mutable_ids_change_on_move_when_not_preferred(graph):
    """What the connector's Prefer header protects against, shown on the emulator."""
    state, base = graph
    pid = state.mail.deliver(make_raw()[0])
    plain = httpx.Client(base_url=base.rstrip("/") + "/v1.0", headers={"Authorization": f"Bearer {TOKEN}"})
    with plain:
        before = plain.get("/me/mailFolders/inbox/messages/delta").json()["value"][0]["id"]
        state.mail.move(pid, "archive")
        after = plain.get("/me/mailFolders/archive/messages/delta").json()["value"][0]["id"]
        assert before != after and pid not in (before, after)
        assert plain.get(f"/me/messages/{pid}", headers={"Prefer": 'IdType="ImmutableId"'}).json()["id"] == pid


def test_a_move_then_permanent_delete_is_a_tombstone(graph, harness):
    state, _ = graph
    pid = harness.deliver(make_raw()[0])
    _, cursor = drain(harness.connector(META), None)
    state.mail.move(pid, "archive")
    state.mail.delete(pid)
    assert latest(drain(harness.connector(META), cursor)[0])[pid].deleted


# --------------------------------------------------------------------- expiry, replays, throttling


@pytest.mark.parametrize("status, code", [(410, "syncStateNotFound"), (400, "SyncStateNotFound"), (410, "resyncRequired")])
def test_expired_delta_state_then_full_listing_yields_each_message_once(graph, harness, status, code):
    state, _ = graph
    ids = [harness.deliver(make_raw(subject=f"m{n}")[0]) for n in range(12)]
    sent = harness.deliver(make_raw(sender=f"Me <{USER}>", subject="out")[0], sent=True)
    conn = harness.connector(META)
    dead_page = conn.list_changes(None).next_page
    _, cursor = drain(conn, None)
    state.expire_delta_tokens(status=status, code=code)
    with pytest.raises(CursorExpired):
        drain(harness.connector(META), cursor)
    with pytest.raises(CursorExpired):  # a page of the dead round too
        harness.connector(META).list_changes(None, dead_page)
    records, fresh = drain(harness.connector(META), None)
    got = [r.external_id for r in records]
    assert sorted(got) == sorted(ids + [sent])  # each message exactly once
    assert fresh and drain(harness.connector(META), fresh)[0] == []


def test_foreign_cursor_is_cursor_expired(harness):
    with pytest.raises(CursorExpired):
        harness.connector(META).list_changes("https://graph.microsoft.com/v1.0/me/messages/delta?$deltatoken=x")


def test_replays_within_a_round_coalesce(graph, harness):
    state, _ = graph
    ids = [harness.deliver(make_raw(subject=f"r{n}")[0]) for n in range(4)]
    _, cursor = drain(harness.connector(META), None)
    state.coalesce = False  # every change served, in order
    state.delta_replays = 3
    state.delta_empty_pages = 1
    for cat in ("A", "B", "C"):
        state.mail.set_categories(ids[0], [cat])
    state.mail.set_categories(ids[1], ["X"])
    state.mail.delete(ids[2])
    conn = harness.connector(META)
    pages, page_token = [], None
    while True:
        page = conn.list_changes(cursor, page_token)
        pages.append(page)
        if page.next_page is None:
            break
        page_token = page.next_page
    assert any(not p.records and p.next_page for p in pages), "an empty page with a nextLink was followed"
    for p in pages:
        page_ids = [r.external_id for r in p.records]
        assert len(page_ids) == len(set(page_ids))
    got = latest([r for p in pages for r in p.records])
    assert content(got[ids[0]]).labels == ("C",)
    assert content(got[ids[1]]).labels == ("X",)
    assert got[ids[2]].deleted
    assert ids[3] not in got


def test_throttling_is_rate_limited_with_retry_after(graph, harness):
    state, _ = graph
    harness.deliver(make_raw()[0])
    state.inject_fault(429, retry_after=9, path=r"/messages/delta")
    with pytest.raises(RateLimited) as info:
        harness.connector(META).list_changes(None)
    assert info.value.retry_after == 9
    assert drain(harness.connector(META), None)[1]


def test_calls_per_message(graph):
    """Full listing: one call per page per folder plus one `$batch` per 20 Sent Items
    messages (their thread headers); a delta: one call per folder plus one `$batch`
    per 20 messages that left a folder."""
    state, base = graph
    for n in range(100):
        state.mail.deliver(make_raw(subject=f"c{n}")[0], folder="sentitems" if n % 4 == 0 else "inbox")
    conn = GraphMail(base, lambda: TOKEN, options=META, page_size=50)
    records, cursor = drain(conn, None)
    # inbox 75 -> 2 pages; sentitems 25 -> 1 page + 2 $batch reading References / In-Reply-To
    assert len(records) == 100 and conn.calls_made == 5
    ids = [r.external_id for r in records]
    for iid in ids[:10]:
        state.mail.add_category(iid, "CRM")
    for iid in ids[10:15]:
        state.mail.move(iid, "deleteditems")
    delta = GraphMail(base, lambda: TOKEN, options=META, page_size=50)
    changed, _ = drain(delta, cursor)
    assert len(latest(changed)) == 15 and delta.calls_made == 3  # 2 delta calls + 1 $batch
    assert all(i not in key for key in state.stats()["by_route"] for i in ids)  # counters never hold ids
    conn.close()
    delta.close()


# --------------------------------------------------------------------- subscriptions


@pytest.fixture
def receiver():
    """A webhook receiver: answers Graph's validation handshake, records notifications."""
    seen: dict[str, list] = {"validations": [], "notifications": []}
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        token = request.query_params.get("validationToken")
        if token is not None:
            with lock:
                seen["validations"].append(token)
            return PlainTextResponse(token)
        with lock:
            seen["notifications"].append(await request.json())
        return JSONResponse({}, status_code=202)

    server = serve(app)
    yield server.base_url.rstrip("/") + "/hook", seen
    server.stop()


@pytest.mark.parametrize("resource", ["me/messages", "me/mailFolders('inbox')/messages"])
def test_subscription_on_messages_notifies_a_delivery(graph, harness, receiver, resource):
    state, _ = graph
    url, seen = receiver
    conn = harness.connector(META)
    sub = conn.create_subscription(url, "mail-state", resource=resource, minutes=60)
    assert len(seen["validations"]) == 1 and sub["resource"] == resource
    pid = harness.deliver(make_raw(subject="Ping")[0])
    notes = [n for batch in seen["notifications"] for n in batch["value"]]
    assert [(n["changeType"], n["resourceData"]["id"], n["clientState"]) for n in notes] == [("created", pid, "mail-state")]
    assert notes[0]["subscriptionId"] == sub["id"]
    harness.deliver(make_raw(subject="Sent")[0], sent=True)
    notes = [n for batch in seen["notifications"] for n in batch["value"]]
    assert len(notes) == (2 if resource == "me/messages" else 1)  # a folder subscription sees its folder only
    conn.delete_subscription(sub["id"])
    assert sub["id"] not in state.subscriptions


def test_mail_admin_api_over_http(graph):
    """Out-of-process tools steer mail through /_emulator/mail like the Python API."""
    import base64

    state, base = graph
    raw, mid = make_raw(subject="Via HTTP")
    with httpx.Client(base_url=base.rstrip("/")) as admin:
        pid = admin.post("/_emulator/mail/deliver", json={"raw_b64": base64.b64encode(raw).decode(),
                                                          "categories": ["Red"]}).json()["id"]
        assert state.mail.message(pid)["categories"] == ["Red"]
        folder = admin.post("/_emulator/mail/folders", json={"displayName": "Deals"}).json()["id"]
        assert admin.post(f"/_emulator/mail/messages/{pid}/move", json={"folder": folder}).json()["rest_id"]
        assert admin.post(f"/_emulator/mail/messages/{pid}/add-category", json={"category": "CRM"}).status_code == 200
        assert state.mail.message(pid)["categories"] == ["Red", "CRM"]
        assert admin.post(f"/_emulator/mail/messages/{pid}/delete").status_code == 200
        assert admin.post(f"/_emulator/mail/messages/{pid}/delete").status_code == 404
        assert admin.get("/_emulator/stats").json()["live_messages"] == 0
