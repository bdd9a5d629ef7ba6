"""activities.memory.collector_paused: the collector is off inside, back as it was after."""

from __future__ import annotations

import gc

import pytest

from activities.memory import collector_paused


@pytest.fixture(autouse=True)
def _collector_restored():
    was_on = gc.isenabled()
    yield
    (gc.enable if was_on else gc.disable)()


def test_paused_inside_and_on_again_after_even_when_the_block_fails():
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_overlapping_pauses_leave_it_to_the_first_to_start_it_again():
    gc.enable()
    outer = collector_paused()
    outer.__enter__()
    with collector_paused():  # another activity, started while the first still runs
        pass
    assert not gc.isenabled()  # the inner one found it off: it does not turn it on
    outer.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_someone_else_turned_off_stays_off():
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()
