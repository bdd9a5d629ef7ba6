"""The mail kind end to end below the workflow: real store, real reference CRM, the
real pipeline steps, mailboxes that keep the mail contract.

Each test states a behaviour a product team's users would check on the platform:
where a message landed, once, with what, and why what was not logged was not.
"""

from __future__ import annotations

import concurrent.futures
import json

import pytest
import sqlalchemy as sa

from models.mail_log import Association
from store import mail as mail_store
from store.schema import items
from tests.mail_contract import make_raw
from tests.mail_world import MailWorld, provider_named

ME = "ann@acme.example"
BOB = "bob@acme.example"


PROVIDERS = ["memory", "gmail", "graph"]


@pytest.fixture(params=PROVIDERS)
def provider(request):
    """Every behaviour holds with the in-memory mailboxes and with the real Gmail and Graph
    connectors over their emulators."""
    p = provider_named(request.param)
    yield p
    getattr(p, "close", lambda: None)()


@pytest.fixture
def world(tmp_path, provider):
    return MailWorld(f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}", provider=provider)


def _contact(world: MailWorld, email: str, given: str = "Pat", family: str = "Prospect", **extra):
    return world.crm.user_create(world.org, "ann", given_name=given, family_name=family, emails=[email], **extra)


def test_mail_with_a_known_contact_is_logged_on_contact_account_and_opportunity(world):
    acc = world.crm.create_account(world.org, "Prospect Inc", "prospect.example")
    pat = _contact(world, "pat@prospect.example")
    opp = world.crm.mail.create_opportunity(world.org, "Big deal", account_id=acc.id, contact_roles=[pat.id])
    cid = world.connect(ME)
    raw, mid = make_raw(to=ME, subject="Pricing", body="the secret price is 4711")
    world.provider.deliver(ME, raw)
    out = world.cycle(cid)
    assert out["write"].applied == 1
    act = world.activity(mid)
    assert act is not None
    assert set(act.associations) >= {Association(object_type="contact", object_id=pat.id),
                                     Association(object_type="account", object_id=acc.id),
                                     Association(object_type="opportunity", object_id=opp.id)}
    assert act.users == ("ann",)
    # the organisation's default is restrictive: participants and date, no subject or body
    assert act.visibility == "metadata" and act.subject is None and act.body_text is None
    assert world.items(cid)[next(iter(world.items(cid)))].rule == "logged_known"


def test_metadata_mode_keeps_bodies_out_of_the_store_and_the_platform(world, tmp_path):
    _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    raw, mid = make_raw(to=ME, subject="Hi", body="marker-body-4711", html="<p>marker-body-4711</p>")
    world.provider.deliver(ME, raw)
    world.cycle(cid)
    assert world.activity(mid) is not None
    with world.engine.connect() as conn:
        stored = json.dumps([dict(r._mapping) for r in conn.execute(sa.select(items))], default=str)
    assert "marker-body-4711" not in stored
    with world.crm.engine.connect() as conn:
        for table in world.crm.engine.dialect.get_table_names(conn):
            rows = conn.exec_driver_sql(f'SELECT * FROM "{table}"').fetchall()
            assert "marker-body-4711" not in json.dumps([tuple(r) for r in rows], default=str), table


def test_full_visibility_logs_the_body_text(tmp_path, provider):
    world = MailWorld(f"sqlite:///{tmp_path/'s.db'}", f"sqlite:///{tmp_path/'c.db'}", provider=provider,
                      org_settings={"visibility": "full"})
    _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    raw, mid = make_raw(to=ME, subject="Hi", body="visible body 12")
    world.provider.deliver(ME, raw)
    world.cycle(cid)
    act = world.activity(mid)
    assert act.subject == "Hi" and "visible body 12" in act.body_text


def test_a_thread_shared_by_two_users_is_logged_once_with_both(world):
    _contact(world, "pat@prospect.example")
    ann, bob = world.connect(ME), world.connect(BOB)
    raw, mid = make_raw(sender="Pat <pat@prospect.example>", to=f"{ME}, {BOB}", subject="Both of you")
    world.provider.deliver(ME, raw)
    world.provider.deliver(BOB, raw)
    world.cycle(ann)
    world.cycle(bob)
    acts = [a for a in world.activities() if a.key == mid]
    assert len(acts) == 1
    assert set(acts[0].users) == {"ann", "bob"}
    assert {r.rule for r in world.items(bob).values()} == {"added_participant"}


def test_a_private_user_makes_the_shared_thread_private(world):
    """The most restrictive level of the users on a thread applies, from its first write."""
    _contact(world, "pat@prospect.example")
    ann = world.connect(ME, mail={"visibility": "subject"})
    bob = world.connect(BOB, mail={"visibility": "private"})
    raw, mid = make_raw(sender="Pat <pat@prospect.example>", to=f"{ME}, {BOB}", subject="Salary talk")
    world.provider.deliver(ME, raw)
    world.provider.deliver(BOB, raw)
    world.cycle(ann)
    # Bob is a connected colleague on the message: his level applies before his copy syncs
    assert world.activity(mid).visibility == "private" and world.activity(mid).subject is None
    world.cycle(bob)
    act = world.activity(mid)
    assert act.visibility == "private" and act.subject is None and set(act.users) == {"ann", "bob"}


def test_skips_are_named_and_counted(world):
    _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    bulk, _ = make_raw(sender="News <news@prospect.example>", to=ME,
                       headers={"List-Unsubscribe": "<mailto:u@prospect.example>"})
    internal, _ = make_raw(sender=f"Bob <{BOB}>", to=ME)
    stranger, _ = make_raw(sender="Who <who@elsewhere.example>", to=ME)
    ids = {world.provider.deliver(ME, raw): rule for raw, rule in
           ((bulk, "bulk"), (internal, "internal_only"), (stranger, "no_known_participant"))}
    out = world.cycle(cid)
    got = world.items(cid)
    assert {mid: got[mid].rule for mid in ids} == ids
    assert all(got[mid].status == "skipped" for mid in ids)
    assert out["plan"].rules["bulk"] == 1
    assert world.activities() == []
    # each rule counted where the state query shows it
    assert world.pipeline.summarize(cid).skipped_by_rule == {"bulk": 1, "internal_only": 1, "no_known_participant": 1}


def test_sent_mail_to_an_unknown_person_captures_a_lead_and_received_does_not(world):
    cid = world.connect(ME)
    sent, sent_mid = make_raw(sender=f"Ann <{ME}>", to="Jane Doe <jane.doe@newco.example>", subject="Intro")
    received, _ = make_raw(sender="Joe Bloggs <joe@other.example>", to=ME)
    world.provider.deliver(ME, sent, sent=True)
    world.provider.deliver(ME, received)
    world.cycle(cid)
    people = world.platform.people_by_email(world.org, ["jane.doe@newco.example", "joe@other.example"])
    assert list(people) == ["jane.doe@newco.example"]
    lead = people["jane.doe@newco.example"][0]
    assert lead.kind == "lead" and lead.name == "Jane Doe"
    act = world.activity(sent_mid)
    assert Association(object_type="lead", object_id=lead.id) in act.associations
    assert {r.rule for r in world.items(cid).values()} == {"logged_captured", "no_known_participant"}


def test_lead_conversion_moves_the_logged_mail_to_the_contact(world):
    cid = world.connect(ME)
    sent, mid = make_raw(sender=f"Ann <{ME}>", to="Jane Doe <jane@newco.example>")
    world.provider.deliver(ME, sent, sent=True)
    world.cycle(cid)
    lead = world.platform.people_by_email(world.org, ["jane@newco.example"])["jane@newco.example"][0]
    conv = world.crm.mail.convert_lead(world.org, lead.id)
    world.pipeline.read_platform(world.org)
    act = world.activity(mid)
    assert Association(object_type="contact", object_id=conv.contact_id) in act.associations
    assert Association(object_type="lead", object_id=lead.id) not in act.associations
    assert world.pipeline.read_platform(world.org).changes == 0  # read once


def test_label_mode_logs_a_message_labelled_later_and_removes_it_when_unlabelled(tmp_path, provider):
    world = MailWorld(f"sqlite:///{tmp_path/'s.db'}", f"sqlite:///{tmp_path/'c.db'}", provider=provider,
                      org_settings={"capture": "label", "on_label_removed": "remove"})
    _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    raw, mid = make_raw(to=ME)
    pid = world.provider.deliver(ME, raw)
    world.cycle(cid)
    assert world.items(cid)[pid].rule == "no_label" and world.activity(mid) is None
    world.provider.add_label(ME, pid, "CRM")
    world.cycle(cid)
    assert world.items(cid)[pid].rule == "logged_label" and world.activity(mid) is not None
    world.provider.remove_label(ME, pid, "CRM")
    world.cycle(cid)
    assert world.items(cid)[pid].rule == "label_removed" and world.activity(mid) is None


def test_deleted_mail_keeps_its_log_by_default(world):
    _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    raw, mid = make_raw(to=ME)
    pid = world.provider.deliver(ME, raw)
    world.cycle(cid)
    world.provider.delete(ME, pid)
    world.cycle(cid)
    assert world.items(cid)[pid].rule == "deleted_log_kept"
    assert world.activity(mid) is not None


def test_a_forgotten_cursor_relists_without_logging_twice(world):
    _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    mids = []
    for i in range(5):
        raw, mid = make_raw(to=ME, subject=f"m{i}")
        world.provider.deliver(ME, raw)
        mids.append(mid)
    world.cycle(cid)
    world.provider.expire(ME)  # Gmail: history 404; Graph: delta 410
    raw, late = make_raw(to=ME, subject="late")
    world.provider.deliver(ME, raw)
    out = world.cycle(cid)
    assert out["fetch"].full_resync
    assert sorted(a.key for a in world.activities()) == sorted(mids + [late])
    assert out["plan"].rules.get("already_logged") == 5


def test_an_ambiguous_association_waits_in_review_and_the_answer_attaches(world):
    a1 = world.crm.create_account(world.org, "Shared One", "shared.example")
    a2 = world.crm.create_account(world.org, "Shared Two", "shared.example")
    _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    raw, mid = make_raw(sender="Pat <pat@prospect.example>", to=f"{ME}, Sam <sam@shared.example>")
    pid = world.provider.deliver(ME, raw)
    world.cycle(cid)
    item = world.items(cid)[pid]
    assert item.status == "applied" and item.review_id is not None
    act = world.activity(mid)
    assert not {x.object_id for x in act.associations} & {a1.id, a2.id}
    # what a person sees (`concord reviews CONN`): the reason and the records to choose from
    from workers import client as api

    (review,) = api.open_reviews(world.sessions, cid)
    assert review["kind"] == "association" and review["detail"]["reason"] == "domain_shared_by_accounts"
    assert {o["object_id"] for o in review["detail"]["options"]} == {a1.id, a2.id}
    from store import cycle as store_cycle
    with world.sessions.begin() as s:
        assert store_cycle.resolve_review_and_reopen(s, cid, item.review_id, "attach")
    world.cycle(cid)
    act = world.activity(mid)
    assert {a1.id, a2.id} <= {x.object_id for x in act.associations}
    assert world.items(cid)[pid].rule == "association_answered"


@pytest.mark.postgres
def test_ten_mailboxes_racing_on_a_hundred_shared_threads_log_each_message_once(pg_url, provider):
    world = MailWorld(pg_url, pg_url, claim_wait_s=10.0, provider=provider)
    _contact(world, "pat@prospect.example")
    users = [f"u{i}@acme.example" for i in range(10)]
    conns = {u: world.connect(u) for u in users}
    expected: dict[str, set[str]] = {}
    for t in range(100):
        holders = [users[(t + k) % 10] for k in range(2 + t % 4)]  # 2..5 mailboxes per thread
        root, root_mid = make_raw(sender="Pat <pat@prospect.example>", to=", ".join(holders), subject=f"T{t}")
        reply, reply_mid = make_raw(sender="Pat <pat@prospect.example>", to=", ".join(holders),
                                    subject=f"Re: T{t}", references=f"<{root_mid}>")
        for u in holders:
            world.provider.deliver(u, root)
            world.provider.deliver(u, reply)
        expected[root_mid] = expected[reply_mid] = {u.split("@")[0] for u in holders}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(world.cycle, conns.values()))
    # a copy that found another mailbox's first write still in flight is pending: its next cycle adds it
    for cid in conns.values():
        if any(r.status == "pending" for r in world.items(cid).values()):
            world.cycle(cid)
    acts = world.activities(limit=10_000)
    keys = [a.key for a in acts]
    assert len(keys) == len(set(keys)) == 200
    assert {a.key: set(a.users) for a in acts} == expected
    threads = {a.key: a.thread_key for a in acts}
    for t_root in [k for k in expected if threads[k] == k]:
        assert sum(1 for v in threads.values() if v == t_root) == 2
    with world.sessions() as s:
        assert mail_store.counts(s, world.org) == {"logged": 200}
    for cid in conns.values():
        assert {r.status for r in world.items(cid).values()} == {"applied"}


@pytest.mark.postgres
def test_the_claim_has_one_winner_under_a_race(pg_url):
    """Ten mailboxes claim one message at the same instant: one holds it, all read the same holder."""
    world = MailWorld(pg_url, pg_url)
    conns = [world.connect(f"r{i}@acme.example") for i in range(10)]
    barrier = __import__("threading").Barrier(10)

    def claim(cid: str):
        barrier.wait()
        with world.sessions.begin() as s:
            return mail_store.claim(s, world.org, "race@x.example", thread_key="race@x.example", weak_thread=False,
                                    connection_id=cid, visibility="metadata")

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        got = list(pool.map(claim, conns))
    holders = {c.claimed_by for c in got}
    assert len(holders) == 1
    assert sum(1 for cid, c in zip(conns, got) if c.held_by(cid)) == 1


def test_platform_refusals_are_fixed_by_a_rule_or_quarantined_alone(world):
    """A lead without a company is fixed from the domain (a named rule); an activity the
    platform refuses is quarantined with its code, and the others in the batch are logged."""
    from platforms.reference_crm.mail_rules import MailRule

    world.crm.mail.configure_rules(world.org, [
        MailRule.required("lead.company required", "lead", "company"),
        MailRule.max_count("at most 2 records", "email_activity", "associations", 2),
    ])
    acc = world.crm.create_account(world.org, "Prospect Inc", "prospect.example")
    _contact(world, "pat@prospect.example")
    _contact(world, "kim@other.example", given="Kim", family="Other")
    cid = world.connect(ME)
    lead_mail, lead_mid = make_raw(sender=f"Ann <{ME}>", to="Solo Person <solo@gmail.com>")
    many, many_mid = make_raw(to=ME, sender="Pat <pat@prospect.example>", subject="many records")  # contact+account
    crowded, crowded_mid = make_raw(sender="Pat <pat@prospect.example>", to=f"{ME}, Kim <kim@other.example>")
    world.provider.deliver(ME, lead_mail, sent=True)
    world.provider.deliver(ME, many)
    bad = world.provider.deliver(ME, crowded)
    out = world.cycle(cid)
    # the free-mail lead got a company by the fix rule, and its mail is logged on it
    lead = world.platform.people_by_email(world.org, ["solo@gmail.com"])["solo@gmail.com"][0]
    assert lead.kind == "lead"
    assert any(a.object_id == lead.id for a in world.activity(lead_mid).associations)
    assert world.activity(many_mid) is not None and acc.id in {a.object_id for a in world.activity(many_mid).associations}
    # Pat's contact and account plus Kim's contact: three records, over the platform's limit
    row = world.items(cid)[bad]
    assert (row.status, row.error_code) == ("quarantined", "validation:associations")
    assert world.activity(crowded_mid) is None
    assert world.pipeline.handle_rejections(__import__("models.workflow", fromlist=["CycleRef"]).CycleRef(
        connection_id=cid, cycle_id="none")).quarantined == 0
    summary = world.pipeline.summarize(cid)
    assert summary.quarantined_by_code == {"validation:associations": 1}
    assert out["write"].rejected == 1


def test_a_reply_without_references_joins_its_thread_as_a_weaker_match(world):
    """Some clients drop References and In-Reply-To: the reply still lands in the thread of
    the message it answers (same subject, same people, days apart), flagged as weak."""
    _contact(world, "pat@prospect.example")
    ann, bob = world.connect(ME), world.connect(BOB)
    root, root_mid = make_raw(sender="Pat <pat@prospect.example>", to=ME, subject="Budget for Q3")
    world.provider.deliver(ME, root)
    world.cycle(ann)
    reply, reply_mid = make_raw(sender=f"Ann <{ME}>", to="Pat <pat@prospect.example>", subject="RE: Budget for Q3")
    world.provider.deliver(ME, reply, sent=True)
    other, other_mid = make_raw(sender="Pat <pat@prospect.example>", to=ME, subject="Re: Something else")
    world.provider.deliver(ME, other)
    world.cycle(ann)
    assert world.activity(root_mid).thread_key == root_mid and not world.activity(root_mid).weak_thread
    assert world.activity(reply_mid).thread_key == root_mid and world.activity(reply_mid).weak_thread
    assert world.activity(other_mid).thread_key != root_mid


def test_a_message_without_message_id_is_logged_once_under_a_flagged_synthesized_key(world):
    _contact(world, "pat@prospect.example")
    ann, bob = world.connect(ME), world.connect(BOB)
    raw, _ = make_raw(sender="Pat <pat@prospect.example>", to=f"{ME}, {BOB}", subject="No id here")
    raw = b"\n".join(line for line in raw.split(b"\n") if not line.lower().startswith(b"message-id:"))
    world.provider.deliver(ME, raw)
    world.provider.deliver(BOB, raw)
    world.cycle(ann)
    world.cycle(bob)
    acts = world.activities()
    assert len(acts) == 1, "both copies derive the same key"
    assert acts[0].synthesized_key and set(acts[0].users) == {"ann", "bob"}


def test_custom_objects_come_through_the_adapters_hook(tmp_path):
    """A product team attaches mail to its own objects (here: a project named in the subject)."""
    from platforms.reference_crm import ReferenceCrmMail

    def projects(org_id, message, people):
        return [Association(object_type="project", object_id="p-42")] if "[P-42]" in message.subject else []

    world = MailWorld(f"sqlite:///{tmp_path/'s.db'}", f"sqlite:///{tmp_path/'c.db'}",
                      org_settings={"visibility": "subject"})
    world.pipeline.platform = ReferenceCrmMail(world.crm, custom_associations=projects)
    pat = _contact(world, "pat@prospect.example")
    cid = world.connect(ME)
    tagged, tagged_mid = make_raw(to=ME, subject="[P-42] kickoff")
    plain, plain_mid = make_raw(to=ME, subject="lunch")
    world.provider.deliver(ME, tagged)
    world.provider.deliver(ME, plain)
    world.cycle(cid)
    assert Association(object_type="project", object_id="p-42") in world.activity(tagged_mid).associations
    assert Association(object_type="contact", object_id=pat.id) in world.activity(tagged_mid).associations
    assert all(a.object_type != "project" for a in world.activity(plain_mid).associations)
