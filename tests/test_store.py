"""Concord's store on SQLite and the real PostgreSQL: migrations, staging, links, reviews, actions."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from models.errors import Fatal, PreconditionFailed
from models.contact import Contact, ContactRecord
from models.record import SideRecord
from store import repo
from store.db import current_revision, make_engine, migrate, session_factory
from store.schema import metadata

EXPECTED_TABLES = {
    "organisations",
    "connections",
    "cursors",
    "items",
    "links",
    "link_keys",
    "reviews",
    "actions",
    "audit_log",
    "pending_oauth",
    "vault_tokens",
    "subscriptions",
}
HEAD = "0012"


@pytest.fixture
def store(db_url):
    """A migrated store with one organisation and one connection; yields a session factory."""
    migrate(db_url)
    engine = make_engine(db_url)
    Session = session_factory(engine)
    with Session.begin() as s:
        repo.create_org(s, "org1", "Org One", {"policy": "newest_wins"})
        repo.create_connection(
            s, id="c1", org_id="org1", user_id="u1", provider="google", account_ref="acct-1"
        )
    yield Session
    engine.dispose()


def _rec(external_id: str, given: str = "Ada", side: str = "mailbox", **kw) -> SideRecord:
    return ContactRecord(
        side=side,
        external_id=external_id,
        content=Contact(given_name=given, family_name="Lovelace", emails=[f"{external_id}@example.org"]),
        **kw,
    )


# --- migrations -------------------------------------------------------------------


def test_migrate_creates_everything_and_is_rerunnable(db_url):
    migrate(db_url)
    migrate(db_url)
    assert current_revision(db_url) == HEAD
    engine = make_engine(db_url)
    try:
        insp = sa.inspect(engine)
        assert EXPECTED_TABLES <= set(insp.get_table_names())
        uniques = {u["name"] for u in insp.get_unique_constraints("links")}
        assert {"uq_links_connection_id_kind_mailbox_id", "uq_links_connection_id_kind_platform_id"} <= uniques
        assert "ix_items_connection_id_kind_status" in {i["name"] for i in insp.get_indexes("items")}
        assert "ix_link_keys_key" in {i["name"] for i in insp.get_indexes("link_keys")}
    finally:
        engine.dispose()


def test_rows_from_before_kinds_become_contacts(db_url):
    """Upgrading a store that holds contacts keeps every row, marked as the contacts kind."""
    migrate(db_url, "0004")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO items (connection_id, side, external_id, record, status, attempts, seq, "
                                 "received_at, updated_at) VALUES ('c1', 'mailbox', 'm1', '{}', 'pending', 0, 1, 0, 0)"))
            conn.execute(sa.text("INSERT INTO links (org_id, connection_id, mailbox_id, platform_id, snapshot, "
                                 "mailbox_hash, platform_hash, created_at, updated_at) "
                                 "VALUES ('o', 'c1', 'm1', 'p1', '{}', 'h', 'h', 0, 0)"))
        migrate(db_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT kind FROM items")).scalar_one() == "contacts"
            assert conn.execute(sa.text("SELECT kind FROM links")).scalar_one() == "contacts"
            # ... and the same ids may now exist once per kind.
            conn.execute(sa.text("INSERT INTO items (connection_id, kind, side, external_id, record, status, attempts, "
                                 "seq, received_at, updated_at) "
                                 "VALUES ('c1', 'mail', 'mailbox', 'm1', '{}', 'pending', 0, 1, 0, 0)"))
            conn.commit()
    finally:
        engine.dispose()


def test_migration_matches_schema_modules(db_url):
    """The hand-written migration and store/schema.py (plus the vault's table) agree."""
    from store.vault import vault_metadata

    migrate(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, [metadata, vault_metadata])
    finally:
        engine.dispose()
    assert diff == []


def test_concurrent_migrations_do_not_race(db_url):
    """Several worker processes starting on a fresh store: one migrates, the others wait.

    Without the migration lock, all but one die on "table already exists".
    """
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=migrate, args=(db_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert current_revision(db_url) == HEAD


def test_migrate_from_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'nested' / 'store.db'}"
    migrate(url)
    assert current_revision(url) == HEAD


def test_sqlite_engine_settings(sqlite_url):
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()


# --- items ------------------------------------------------------------------------


def test_stage_records_coalesces_and_reopens(store):
    with store.begin() as s:
        assert repo.stage_records(s, "c1", "mailbox", [_rec("p/1", "Ada"), _rec("p/2", "Bob")], "b1") == 2
    with store.begin() as s:
        first = repo.get_items(s, "c1", "mailbox", ["p/1"])["p/1"]
        assert first.seq == 1 and first.status == "pending" and first.batch_id == "b1"
        assert repo.set_item_outcome(
            s, first.id, "quarantined", error_code="validation_rejected", error_message="phone required"
        )
    with store.begin() as s:
        # A second change for p/1 (and a duplicate inside the batch: the last one wins).
        repo.stage_records(s, "c1", "mailbox", [_rec("p/1", "Ad"), _rec("p/1", "Adele")], "b2")
    with store.begin() as s:
        row = repo.get_items(s, "c1", "mailbox", ["p/1"])["p/1"]
        assert row.id == first.id
        assert row.seq == 2
        assert row.status == "pending"
        assert row.error_code is None and row.error_message is None
        assert row.batch_id == "b2"
        assert ContactRecord.model_validate(row.record).content.given_name == "Adele"
        assert repo.count_items_by_status(s, "c1") == {"pending": 2}
        # An outcome computed for the old version is refused.
        assert not repo.set_item_outcome(s, row.id, "applied", expected_seq=1)
        assert repo.set_item_outcome(s, row.id, "applied", expected_seq=2)
        # Same external id on the other side is a different item.
        repo.stage_records(s, "c1", "platform", [_rec("p/1", side="platform")], "b3")
        assert repo.count_items_by_status(s, "c1") == {"pending": 2, "applied": 1}


def test_stage_records_refuses_wrong_side(store):
    with store.begin() as s, pytest.raises(Fatal):
        repo.stage_records(s, "c1", "mailbox", [_rec("x", side="platform")], "b")


def test_stage_ten_thousand_records_fast(store, db_url):
    records = [_rec(f"people/c{i}", f"Name{i}") for i in range(10_000)]
    t0 = time.perf_counter()
    with store.begin() as s:
        assert repo.stage_records(s, "c1", "mailbox", records, "bulk-1") == 10_000
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    with store.begin() as s:
        repo.stage_records(s, "c1", "mailbox", records, "bulk-2")
    second = time.perf_counter() - t0
    backend = sa.make_url(db_url).get_backend_name()
    print(f"\nstage 10,000 on {backend}: insert {first:.2f} s, upsert {second:.2f} s")
    assert first < 15 and second < 15
    with store.begin() as s:
        assert repo.count_items_by_status(s, "c1") == {"pending": 10_000}
        assert len(repo.items_by_batch(s, "c1", "bulk-2")) == 10_000
        got = repo.get_items(s, "c1", "mailbox", [f"people/c{i}" for i in range(0, 10_000, 7)])
        assert len(got) == len(range(0, 10_000, 7)) and all(r.seq == 2 for r in got.values())
        page = repo.items_by_status(s, "c1", ["pending"], limit=100)
        nxt = repo.items_by_status(s, "c1", ["pending"], limit=100, after_id=page[-1].id)
        assert len(page) == len(nxt) == 100 and nxt[0].id > page[-1].id
        t0 = time.perf_counter()
        repo.set_item_outcomes(s, [{"item_id": r.id, "status": "applied"} for r in repo.items_by_status(s, "c1", ["pending"])])
        print(f"bulk outcomes for 10,000: {time.perf_counter() - t0:.2f} s")
        assert repo.count_items_by_status(s, "c1") == {"applied": 10_000}


def test_bulk_outcomes_respect_expected_seq(store):
    with store.begin() as s:
        repo.stage_records(s, "c1", "mailbox", [_rec("a"), _rec("b")], "b1")
        rows = repo.get_items(s, "c1", "mailbox", ["a", "b"])
        repo.stage_records(s, "c1", "mailbox", [_rec("b", "Newer")], "b2")  # b is now seq 2
        repo.set_item_outcomes(
            s,
            [
                {"item_id": rows["a"].id, "status": "skipped", "rule": "no_email", "expected_seq": 1},
                {"item_id": rows["b"].id, "status": "applied", "expected_seq": 1},
            ],
        )
        after = repo.get_items(s, "c1", "mailbox", ["a", "b"])
        assert (after["a"].status, after["a"].rule) == ("skipped", "no_email")
        assert after["b"].status == "pending"


def test_restage_quarantined(store):
    with store.begin() as s:
        repo.stage_records(s, "c1", "platform", [_rec(f"r{i}", side="platform") for i in range(3)], "b1")
        rows = repo.get_items(s, "c1", "platform", ["r0", "r1", "r2"])
        for r in rows.values():
            repo.set_item_outcome(s, r.id, "quarantined", error_code="validation_rejected", error_message="x")
    with store.begin() as s:
        assert repo.restage_quarantined(s, "c1", [rows["r0"].id]) == 1
        summary = repo.sync_state_summary(s, "c1")
        assert summary["items"]["quarantined"] == 2 and summary["items"]["pending"] == 1
        assert [q["external_id"] for q in summary["quarantined"]] == ["r1", "r2"]
        assert all(q["error_code"] == "validation_rejected" for q in summary["quarantined"])
        assert repo.restage_quarantined(s, "c1") == 2
        again = repo.get_items(s, "c1", "platform", ["r0", "r1", "r2"])
        assert all(r.status == "pending" and r.attempts == 1 and r.seq == 2 for r in again.values())
        assert repo.restage_quarantined(s, "c1") == 0


# --- links ------------------------------------------------------------------------


def _link(mailbox_id: str, platform_id: str, keys=("email:ada@example.org",)) -> dict:
    contact = Contact(given_name="Ada", emails=["ada@example.org"])
    return {
        "org_id": "org1",
        "connection_id": "c1",
        "mailbox_id": mailbox_id,
        "platform_id": platform_id,
        "snapshot": contact,
        "mailbox_hash": contact.canonical_hash(),
        "platform_hash": contact.canonical_hash(),
        "keys": list(keys),
    }


def test_links_unique_and_keys(store):
    with store.begin() as s:
        link_id = repo.save_link(s, **_link("m1", "p1", keys=("email:ada@example.org", "name:ada")))
        repo.save_link(s, **_link("m2", "p2", keys=("email:bob@example.org",)))
    with store() as s:
        with pytest.raises(repo.LinkConflict):
            repo.save_link(s, **_link("m1", "p-other"))
        s.rollback()
        with pytest.raises(repo.LinkConflict):
            repo.save_link(s, **_link("m-other", "p1"))
        s.rollback()
        # The same pair written again is that link again, not a conflict.
        assert repo.save_link(s, **_link("m1", "p1")) == link_id
        s.rollback()
    with store.begin() as s:
        assert repo.count_links(s, "c1") == 2
        assert [r.id for r in repo.links_sharing_keys(s, "c1", {"name:ada", "zzz"})] == [link_id]
        assert repo.links_sharing_keys(s, "other-conn", {"name:ada"}) == []
        by_m = repo.get_links_by_mailbox_ids(s, "c1", ["m1", "nope"])
        assert list(by_m) == ["m1"] and Contact.model_validate(by_m["m1"].snapshot).given_name == "Ada"
        assert list(repo.get_links_by_platform_ids(s, "c1", ["p2"])) == ["p2"]
        # Update by id replaces the keys.
        assert repo.save_link(s, id=link_id, platform_etag="e2", keys=["email:new@example.org"]) == link_id
        assert repo.link_keys_for(s, [link_id]) == {link_id: {"email:new@example.org"}}
        assert repo.get_link(s, link_id).platform_etag == "e2"
        assert repo.delete_link(s, link_id)
        assert repo.link_keys_for(s, [link_id]) == {}
        assert repo.count_links(s, "c1") == 1
    with store.begin() as s:
        # The unique constraint is per connection: another connection may link m2 too.
        repo.create_connection(s, id="c2", org_id="org1", user_id="u2", provider="microsoft", account_ref="a2")
        other = _link("m2", "p2") | {"connection_id": "c2"}
        assert repo.save_link(s, **other) > 0


def test_save_links_skips_conflicts_per_spec(store):
    """One link that would join an already-linked record never fails its batch."""
    with store.begin() as s:
        first = repo.save_link(s, **_link("m1", "p1"))
    with store.begin() as s:
        ids = repo.save_links(s, [_link("m2", "p2"), _link("m3", "p1"), _link("m1", "p1"),
                                  _link("m4", "p4"), _link("m5", "p4")], skip_conflicts=True)
        assert ids[1] is None and ids[4] is None, "p1 and p4 are linked already"
        assert ids[2] == first
        assert None not in (ids[0], ids[3])
        assert repo.count_links(s, "c1") == 3


def test_a_concurrent_winner_is_a_link_conflict_not_a_stale_etag(store):
    """The database constraint still decides when two writers race past the read."""
    import sqlalchemy as sa

    with store() as s:
        s.execute(sa.text("CREATE UNIQUE INDEX IF NOT EXISTS t_dummy ON links (org_id)"))
        repo.save_link(s, **_link("m1", "p1"))
        with pytest.raises(repo.LinkConflict) as err:
            repo.save_link(s, **_link("m2", "p2"))
        assert not isinstance(err.value, PreconditionFailed)
        s.rollback()


def test_save_links_bulk_returns_ids_in_order(store):
    specs = [_link(f"m{i}", f"p{i}", keys=(f"k{i}", "shared")) for i in range(2500)]
    with store.begin() as s:
        ids = repo.save_links(s, specs)
        assert len(set(ids)) == 2500
        rows = repo.get_links_by_mailbox_ids(s, "c1", [f"m{i}" for i in range(2500)])
        assert [rows[f"m{i}"].id for i in range(2500)] == ids
        assert len(repo.links_sharing_keys(s, "c1", {"shared"})) == 2500


# --- reviews and actions ----------------------------------------------------------


def test_resolve_review_only_once(store):
    with store.begin() as s:
        rid = repo.open_review(
            s,
            connection_id="c1",
            kind="conflict",
            mailbox_id="m1",
            platform_id="p1",
            fields=["job_title"],
            detail={"mailbox": {"job_title": "CTO"}, "platform": {"job_title": "CEO"}},
        )
        assert [r.id for r in repo.open_reviews(s, "c1", kind="conflict")] == [rid]
    with store.begin() as s:
        assert repo.resolve_review(s, rid, {"choice": "mailbox", "fields": {}})
        assert not repo.resolve_review(s, rid, {"choice": "platform", "fields": {}})
        review = repo.get_review(s, rid)
        assert review.status == "resolved" and review.resolution["choice"] == "mailbox"
        assert review.resolved_at is not None
        assert repo.open_reviews(s, "c1") == []
        assert [r.id for r in repo.reviews_for_items(s, "c1", platform_ids=["p1"])] == [rid]
        assert repo.set_review_status(s, rid, "applied", expected_status="resolved")
        assert not repo.set_review_status(s, rid, "applied", expected_status="resolved")
        with pytest.raises(Fatal):
            repo.resolve_review(s, rid, {"choice": "whatever"})


def test_add_actions_idempotent(store):
    planned = [
        {"idempotency_key": "c1:cyc1:m1", "item_mailbox_id": "m1", "decision": {"op": "create_platform"}},
        {"idempotency_key": "c1:cyc1:p2", "item_platform_id": "p2", "decision": {"op": "update_mailbox"}},
    ]
    with store.begin() as s:
        ids = repo.add_actions(s, "c1", "cyc1", planned)
        assert repo.update_action(s, ids[0], expected_status="planned", status="platform_done", result={"id": "p9"})
    with store.begin() as s:
        again = repo.add_actions(s, "c1", "cyc1", planned + [{"idempotency_key": "c1:cyc1:m3", "decision": {}}])
        assert again[:2] == ids and again[2] not in ids
        assert repo.get_action(s, ids[0]).status == "platform_done"  # untouched by the re-add
        assert [a.id for a in repo.actions_by_status(s, "c1", ["planned"])] == [ids[1], again[2]]
        assert not repo.update_action(s, ids[0], expected_status="planned", status="done")
        total = s.execute(sa.select(sa.func.count()).select_from(sa.table("actions"))).scalar_one()
        assert total == 3


# --- misc -------------------------------------------------------------------------


def test_cursors_connections_audit_oauth(store):
    with store.begin() as s:
        assert repo.get_cursor(s, "c1", "contacts:mailbox") is None
        repo.set_cursor(s, "c1", "contacts:mailbox", "tok1", full_sync=True)
        repo.set_cursor(s, "c1", "contacts:mailbox", "tok2")
        assert repo.get_cursor(s, "c1", "contacts:mailbox") == "tok2"
        assert repo.list_cursors(s, "c1")["contacts:mailbox"].full_sync_count == 1
        assert repo.set_connection_status(s, "c1", "needs_reauth")
        assert repo.get_connection(s, "c1").status == "needs_reauth"
        assert [c.id for c in repo.list_connections(s, org_id="org1")] == ["c1"]
        assert repo.find_connection(s, "org1", "google", "acct-1").id == "c1"
        with pytest.raises(Fatal):
            repo.set_connection_status(s, "c1", "sleeping")
        repo.audit(s, org_id="org1", connection_id="c1", side="platform", op="create", external_id="p1",
                   detail={"fields": ["emails"]})
        repo.audit_many(s, [{"org_id": "org1", "op": "link", "external_id": "m1"}] * 3)
        assert len(repo.audit_entries(s, org_id="org1")) == 4
        repo.put_pending_oauth(s, state="st", provider="google", org_id="org1", user_id="u1",
                               code_verifier="v", redirect_uri="http://127.0.0.1/cb")
        assert repo.take_pending_oauth(s, "st").code_verifier == "v"
        assert repo.take_pending_oauth(s, "st") is None  # consumed once
        repo.put_pending_oauth(s, state="old", provider="google", org_id="org1", user_id="u1",
                               code_verifier="v", redirect_uri="x", ttl=-1)
        assert repo.take_pending_oauth(s, "old") is None  # expired


def test_json_round_trips_unicode(store):
    tricky = "Zoë Ōkubo 山田 ✓ 👩🏽‍💻 עִבְרִית e\u0301 nul:\u0000 end"
    rec = ContactRecord(
        side="mailbox",
        external_id="people/ü1",
        content=Contact(given_name=tricky, notes="line1\nline2 \"quoted\" \\ back", emails=["zoë@exämple.org"]),
    )
    with store.begin() as s:
        repo.stage_records(s, "c1", "mailbox", [rec], "b1")
        repo.create_org(s, "org-ü", "Ünïcode Org ✓", {"fix_rules": [{"name": "ß→ss", "value": "日本"}]})
    with store.begin() as s:
        row = repo.get_items(s, "c1", "mailbox", ["people/ü1"])["people/ü1"]
        assert ContactRecord.model_validate(row.record) == rec
        assert repo.get_org(s, "org-ü").settings["fix_rules"][0] == {"name": "ß→ss", "value": "日本"}



def test_one_connection_per_org_provider_account(db_url):
    """Two first connects of the same mailbox racing: the second insert is refused."""
    import sqlalchemy as sa

    migrate(db_url)
    sessions = session_factory(make_engine(db_url))
    with sessions.begin() as s:
        repo.create_org(s, "o1", "Org")
        repo.create_connection(s, id="c1", org_id="o1", user_id="u", provider="google", account_ref="sub-1")
    with pytest.raises(sa.exc.IntegrityError):
        with sessions.begin() as s:
            repo.create_connection(s, id="c2", org_id="o1", user_id="u", provider="google", account_ref="sub-1")
