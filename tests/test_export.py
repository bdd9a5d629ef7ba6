"""Export of a connection's or organisation's synced data and audit log: JSON and CSV
round trips against the store, streaming, the CLI, and the admin endpoint's auth."""

from __future__ import annotations

import csv
import io
import json
import types

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from api.export import export_router
from models.contact import Contact
from models.record import SideRecord
from store import export, repo
from store.db import make_engine, migrate, session_factory
from store.schema import audit_log, items, links
from workers import cli
from workers import client as api

TOKEN = "admin-token-0123456789"


@pytest.fixture
def world(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    sessions = session_factory(make_engine(url))
    with sessions.begin() as s:
        repo.create_org(s, "org1", "Org")
        repo.create_org(s, "org2", "Other")
        for cid, org in (("c1", "org1"), ("c2", "org1"), ("c3", "org2")):
            repo.create_connection(s, id=cid, org_id=org, user_id="u", provider="google", account_ref=f"a-{cid}")
        for n in range(30):
            cid = ("c1", "c2", "c3")[n % 3]
            org = "org2" if cid == "c3" else "org1"
            c = Contact(given_name=f"Name{n}", family_name="Ünïcode, \"quoted\"", emails=(f"p{n}@example.com",),
                        notes="line one\nline two")
            repo.save_link(s, org_id=org, connection_id=cid, mailbox_id=f"m{n}", platform_id=f"p{n}", snapshot=c,
                           mailbox_hash="h", platform_hash="h")
            repo.stage_records(s, cid, "mailbox", [SideRecord[Contact](side="mailbox", external_id=f"m{n}",
                                                                       content=c)], "b")
            repo.audit(s, org_id=org, connection_id=cid, op="create", side="platform", external_id=f"p{n}",
                       detail={"fields": ["emails"]})
        row = repo.get_items(s, "c1", "mailbox", ["m0"])["m0"]
        repo.set_item_outcome(s, row.id, "quarantined", rule="r1", error_code="validation_rejected",
                              error_message="bad, \"really\"")
    return types.SimpleNamespace(url=url, sessions=sessions)


def _store_rows(sessions, table, where):
    with sessions() as s:
        return {int(r.id): dict(r._mapping) for r in s.execute(sa.select(table).where(where))}


def test_json_round_trip_matches_the_store(world):
    doc = json.loads("".join(export.json_chunks(world.sessions, export.Scope(connection_id="c1"))))
    assert doc["scope"] == {"connection_id": "c1"}
    for section, table, where in (("links", links, links.c.connection_id == "c1"),
                                  ("items", items, items.c.connection_id == "c1"),
                                  ("audit_log", audit_log, audit_log.c.connection_id == "c1")):
        stored = _store_rows(world.sessions, table, where)
        got = {r["id"]: r for r in doc[section]}
        assert set(got) == set(stored) and len(got) == 10
        for i, row in got.items():
            for col, value in row.items():
                assert stored[i][col] == value, (section, col)
    quarantined = [r for r in doc["items"] if r["status"] == "quarantined"]
    assert quarantined[0]["rule"] == "r1" and quarantined[0]["error_code"] == "validation_rejected"
    # an organisation's export holds its connections, not another organisation's
    org = json.loads("".join(export.json_chunks(world.sessions, export.Scope(org_id="org1"))))
    assert {r["connection_id"] for r in org["links"]} == {"c1", "c2"} and len(org["links"]) == 20
    assert len(org["items"]) == 20 and len(org["audit_log"]) == 20


def test_csv_round_trip_matches_the_store(world):
    text = "".join(export.csv_chunks(world.sessions, export.Scope(org_id="org1")))
    rows = list(csv.DictReader(io.StringIO(text)))
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    stored_links = _store_rows(world.sessions, links, links.c.org_id == "org1")
    assert len(by["links"]) == len(stored_links) == 20
    for r in by["links"]:
        st = stored_links[int(r["id"])]
        assert json.loads(r["snapshot"]) == st["snapshot"]
        assert (r["mailbox_id"], r["platform_id"], r["connection_id"]) == (st["mailbox_id"], st["platform_id"],
                                                                           st["connection_id"])
    stored_items = _store_rows(world.sessions, items, items.c.connection_id.in_(["c1", "c2"]))
    for r in by["items"]:
        st = stored_items[int(r["id"])]
        assert json.loads(r["record"]) == st["record"]
        assert (r["status"], r["rule"] or None, r["error_code"] or None, r["error_message"] or None) == \
            (st["status"], st["rule"], st["error_code"], st["error_message"])
    assert len(by["audit_log"]) == 20 and all(json.loads(r["detail"]) == {"fields": ["emails"]}
                                              for r in by["audit_log"])


def test_export_is_streamed(world, monkeypatch):
    chunks = export.chunks(world.sessions, export.Scope(org_id="org1"), "json")
    assert isinstance(chunks, types.GeneratorType)
    first = next(chunks)
    assert first.startswith('{"scope"')  # something comes out before all rows are read
    assert sum(1 for _ in chunks) > 60  # a chunk per row, not one document
    monkeypatch.setattr(export, "CHUNK", 2)
    assert len(list(export.csv_chunks(world.sessions, export.Scope(connection_id="c2")))) == 1 + 30


def test_endpoint_needs_the_admin_token(world):
    app = TestClient(create_app([export_router(world.sessions, TOKEN)]))
    assert app.get("/admin/export?connection=c1").status_code == 401
    assert app.get("/admin/export?connection=c1", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = app.get("/admin/export?connection=c1&format=json", headers=auth)
    assert res.status_code == 200 and res.headers["content-type"].startswith("application/json")
    assert len(res.json()["links"]) == 10
    res = app.get("/admin/export?org=org1&format=csv", headers=auth)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(res.text)))) == 60
    assert app.get("/admin/export?connection=nope", headers=auth).status_code == 404
    assert app.get("/admin/export?connection=c1&org=org1", headers=auth).status_code == 400
    assert app.get("/admin/export?connection=c1&format=xml", headers=auth).status_code == 400
    # without a configured token the route does not exist
    closed = TestClient(create_app([export_router(world.sessions, None)]))
    assert closed.get("/admin/export?connection=c1", headers=auth).status_code == 404


def test_cli_export(world, tmp_path, capsys):
    out = tmp_path / "c1.json"
    assert cli.run(["export", "--connection", "c1", "--format", "json", "--out", str(out),
                    "--store-url", world.url]) == 0
    assert len(json.loads(out.read_text())["items"]) == 10
    assert cli.run(["export", "--org", "org2", "--format", "csv", "--store-url", world.url]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 30
    assert cli.run(["export", "--connection", "nope", "--format", "csv", "--store-url", world.url]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err
    with pytest.raises(api.UnknownConnection):
        api.export_chunks(world.sessions, org_id="org-none")
