"""Calendar push kept alive by `subscriptions.maintain`, end to end over HTTP: the
Calendar emulator's channel pings reach the real webhook route (tests/test_webhooks.py's
World), which checks the channel token and wakes the mailbox's workflow.

- The registry's "calendar" PushNeed on Google opens an events.watch channel whose
  token is the row's secret and whose resourceId is the row's resource.
- Calendar channels cannot be extended: a channel close to expiry is replaced by a new
  one, and the old one's pings are refused as removed.
"""

from __future__ import annotations

import time

import pytest

from activities.subscriptions import SubscriptionActivities
from emulators.google_calendar import CalendarState, create_app
from emulators.server import serve
from store import repo
from store import subscriptions as subs
from tests.test_webhooks import make_world, wait_for, world  # noqa: F401 - fixtures
from workers.mailboxes import CalendarBuilder

USER = "ada@analytical.example"


@pytest.fixture
def calendar():
    state = CalendarState(default_user=USER, time_zone="Europe/London")
    server = serve(create_app(state))
    try:
        yield state, server
    finally:
        server.stop()


def _unused(info):
    raise AssertionError("contacts connector not expected")


def test_calendar_channel_created_wakes_the_mailbox_and_is_replaced_before_expiry(world, calendar):
    state, server = calendar
    settings = {"calendar_endpoint": server.base_url + "calendar/v3/", "token": "emulator-token", "kinds": ["calendar"]}
    with world.sessions.begin() as s:
        repo.create_connection(s, id="g-cal", org_id="org1", user_id="u", provider="google", account_ref="acct-g-cal",
                               settings=settings)
    acts = SubscriptionActivities(world.sessions, _unused, calendar_for=CalendarBuilder(None), webhook_base_url=world.base)

    counts = acts.maintain("g-cal")
    assert {k: v for k, v in counts.items() if v} == {"created": 1}
    with world.sessions() as s:
        (row,) = subs.list_for_connection(s, "g-cal", status="active")
    channel = state.channels[row.external_id]
    assert row.provider == "google_calendar" and row.resource == channel.resource_id
    assert channel.address == world.base + "/webhooks/calendar"
    assert subs.secret_matches(row, channel.token)
    assert acts.maintain("g-cal")["unchanged"] == 1

    state.put_event(USER, {"summary": "x", "start": {"date": "2026-12-07"}, "end": {"date": "2026-12-08"}})
    wait_for(lambda: world.signal.for_conn("g-cal"), what="calendar wake")
    assert world.signal.for_conn("g-cal")[0][3] == "calendar:exists"

    with world.sessions.begin() as s:
        subs.set_expiry(s, row.id, time.time() + 60)
    assert {k: v for k, v in acts.maintain("g-cal").items() if v} == {"replaced": 1}
    with world.sessions() as s:
        (second,) = subs.list_for_connection(s, "g-cal", status="active")
    assert second.external_id != row.external_id and second.external_id in state.channels
