"""activities.memory.collector_paused: off inside, back as it was after the last pause."""

from __future__ import annotations

import gc

import pytest

from activities import memory
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


def test_overlapping_pauses_start_it_again_when_the_last_one_ends():
    gc.enable()
    first, second = collector_paused(), collector_paused()
    first.__enter__()
    second.__enter__()  # another activity, started while the first still runs
    first.__exit__(None, None, None)  # the first ends: the second still works in bulk
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_someone_else_turned_off_stays_off():
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_a_pause_kept_up_by_overlapping_activities_still_collects(monkeypatch):
    """A worker never idle never reaches the last pause's end: an activity starting
    after MAX_PAUSE_S of pause collects once, while the collector stays off."""
    runs: list[str] = []

    def seen(phase, info):
        if phase == "stop":
            runs.append(phase)

    gc.enable()
    gc.callbacks.append(seen)
    try:
        with collector_paused():
            with collector_paused():  # within the limit: no collection
                pass
            assert runs == []
            monkeypatch.setattr(memory, "MAX_PAUSE_S", 0.0)
            with collector_paused():
                assert not gc.isenabled()
            assert len(runs) == 1
    finally:
        gc.callbacks.remove(seen)
    assert gc.isenabled()
