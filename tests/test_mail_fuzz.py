"""Malformed mail never takes a batch down: each message ends logged, skipped or
quarantined with a code (DESIGN: nothing lost), and the reader never raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from models.mail import MailMessage
from sync.mail.content import parse_raw
from tests.mail_world import MailWorld
from tests.mime_corpus import CORRUPTIONS, corrupt, malformed_messages


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_messages())
def test_the_reader_never_raises_and_names_what_it_could_not_read(raw):
    for bodies in (False, True):
        msg = parse_raw(raw, bodies=bodies)
        assert isinstance(msg, MailMessage)
        assert msg.message_id  # a synthesized one at worst, flagged
        assert msg.synthesized_id == ("missing_message_id" in msg.problems or "bad_message_id" in msg.problems
                                      or "unparseable" in msg.problems)
        if not bodies:
            assert msg.body_text is None
        # the canonical message itself round-trips (it is what gets staged)
        assert MailMessage.model_validate_json(msg.model_dump_json()) == msg


def test_a_thousand_malformed_messages_each_end_in_a_visible_state(tmp_path):
    world = MailWorld(f"sqlite:///{tmp_path/'s.db'}", f"sqlite:///{tmp_path/'c.db'}",
                      org_settings={"visibility": "full"})
    world.crm.user_create(world.org, "ann", given_name="Pat", family_name="Prospect", emails=["pat@prospect.example"])
    me = "ann@acme.example"
    cid = world.connect(me)
    delivered = [world.provider.deliver(me, corrupt(seed)) for seed in range(1000)]
    out = world.cycle(cid)
    got = world.items(cid)
    assert sorted(got) == sorted(delivered), "every message staged"
    states = {}
    for mid in delivered:
        row = got[mid]
        assert row.status in ("applied", "skipped", "quarantined"), (row.status, row.rule)
        assert row.rule, "every outcome names its rule"
        if row.status == "quarantined":
            assert row.error_code
        states[row.status] = states.get(row.status, 0) + 1
    assert out["plan"].planned == 1000
    # corruption does not stop good-enough mail from being logged
    assert states.get("applied", 0) > 300, states
    assert len(CORRUPTIONS) >= 15
