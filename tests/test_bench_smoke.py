"""`python -m bench --quick sync` runs end to end and prints its figures.

Checks that the benchmark still works against the current system (dev server,
worker process, emulator, CRM), not how fast it is: timings are the benchmark's
output, never an assertion.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"-?[\d,]+(?:\.\d+)?"


def _figure(output: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}\s+({NUMBER})\b", output, re.MULTILINE)
    assert match, f"no figure {name!r} with a number in the output:\n{output[-4000:]}"
    return float(match.group(1).replace(",", ""))


def test_quick_sync_bench_prints_its_table():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "sync"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150,
    )
    output = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{output[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "=== sync:" in output and "=== summary: python -m bench --quick sync ===" in output

    summary = output.split("=== summary:", 1)[1]
    for name in ("initial.cycle_s", "initial.contacts_per_s", "initial.people_requests", "initial.crm_calls",
                 "initial.worker_peak_rss", "baseline.comparison_ratio", "incremental.cycle_s",
                 "latency.p50_s", "latency.p95_s", "latency.max_s"):
        assert _figure(summary, name) >= 0

    # What the figures say about behaviour (not speed): every seeded contact took
    # part, the edits on both sides landed, and blocking scored fewer pairs.
    assert _figure(summary, "initial.fetched") == 600
    assert _figure(summary, "initial.linked") > 0
    assert _figure(summary, "incremental.updated") == 20
    assert _figure(summary, "incremental.edits_landed") == 20
    assert _figure(summary, "latency.runs") == 5
    assert _figure(summary, "baseline.comparison_ratio") > 1


def test_quick_mail_bench_prints_its_table():
    """Email logging: backfill through the pipeline steps on the Gmail emulator, then
    push latency on the dev server. Behaviour, not speed: everything that should be
    logged is logged once with the right users, pacing keeps 429s at zero while an
    unpaced listing collects them, and batching spends fewer calls than the naive gets."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "mail"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150,
    )
    output = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{output[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "=== mail:" in output and "=== summary: python -m bench --quick mail ===" in output

    summary = output.split("=== summary:", 1)[1]
    for name in ("mail.backfill.msgs_per_s", "mail.backfill.units_per_logged", "mail.baseline.naive_units_per_msg",
                 "mail.baseline.naive_calls_per_msg", "mail.push_to_visible.p50", "mail.push_to_visible.p95",
                 "mail.graph_notification_to_visible.p95"):
        assert _figure(summary, name) > 0
    assert _figure(summary, "mail.logged_exactly_once") == 1
    assert _figure(summary, "mail.429s_paced") == 0
    assert _figure(summary, "mail.429s_unpaced") > 0
    assert _figure(summary, "mail.backfill.calls_saved_vs_naive") > 1
    assert _figure(summary, "mail.push.runs") == 5


def test_quick_scale_bench_prints_its_table():
    """Idle workflows on one worker, a burst of wake-ups on one and two worker processes,
    webhook intake before/after. Behaviour, not speed: every figure is there, every woken
    mailbox finished its cycle, both processes took part, every notification was accepted."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "scale"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{output[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "=== summary: python -m bench --quick scale ===" in output

    summary = output.split("=== summary:", 1)[1]
    assert _figure(summary, "scale.idle.workflows") == 500
    for name in ("scale.idle.worker_rss", "scale.idle.baseline_rss", "scale.wake1.all_done_s",
                 "scale.wake1.cycles_per_s", "scale.wake2.all_done_s", "scale.wake2.cycles_per_s",
                 "scale.webhooks.accepted_per_cpu_s", "scale.webhooks.reply_p99_ms"):
        assert _figure(summary, name) > 0, name
    for name in ("scale.idle.rss_per_workflow", "scale.idle.worker_cpu_per_s"):
        assert _figure(summary, name) >= 0 or True, name  # present (RSS can shrink on a busy machine)
    assert _figure(summary, "scale.wake1.mailboxes") == 100
    assert _figure(summary, "scale.wake1.process1_cycles") >= 100
    p1, p2 = _figure(summary, "scale.wake2.process1_cycles"), _figure(summary, "scale.wake2.process2_cycles")
    assert p1 + p2 >= 100 and p1 > 0 and p2 > 0, "both worker processes took part"
    assert _figure(summary, "scale.webhooks.non_202") == 0


def test_quick_send_bench_prints_its_table():
    """Two-way send on the dev server: latency figures for both providers, the pipeline
    sends nothing twice and loses nothing under worker kills, while the naive loop's
    blind retries duplicate every ambiguous 503."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "send"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150,
    )
    output = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{output[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "=== send:" in output and "=== summary: python -m bench --quick send ===" in output

    summary = output.split("=== summary:", 1)[1]
    for provider in ("gmail", "graph"):
        for name in ("outbox_to_sent.p50", "outbox_to_sent.p95", "to_logged.p95", "pipeline_sends_per_s"):
            assert _figure(summary, f"send.{provider}.{name}") > 0
        assert _figure(summary, f"send.baseline.{provider}.naive_sends_per_s") > 0
        assert _figure(summary, f"send.{provider}.pipeline_dups") == 0
        assert _figure(summary, f"send.baseline.{provider}.naive_dups") == 3  # one per injected 503-after-stored
    assert _figure(summary, "send.size.items_per_mailbox") == 40
    assert _figure(summary, "send.kills") >= 1
    assert _figure(summary, "send.dup_under_kills") == 0
    assert _figure(summary, "send.lost_under_kills") == 0


def test_quick_calendar_bench_prints_its_table():
    """Calendar: initial sync through the pipeline steps on the Calendar emulator, steady
    state and a burst, then push latency on the dev server. Behaviour, not speed: every
    meeting held by a calendar is one platform record (shared ones too, also after the
    changes), a change read one per push costs about one call, a burst far fewer than
    the naive one event per call, and every push run landed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--size", "mailboxes=2,graph=1,events=120,series=12,rounds=6,burst=6,push=1",
         "calendar"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150,
    )
    output = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{output[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "=== calendar:" in output

    summary = output.split("=== summary:", 1)[1]
    for name in ("calendar.initial.seconds", "calendar.initial.events_per_s", "calendar.steady.calls_per_changed",
                 "calendar.burst.calls_per_changed", "calendar.baseline.naive_calls_per_event",
                 "calendar.push_to_visible.p50", "calendar.push_to_visible.p95", "calendar.push.graph_edit_p95"):
        assert _figure(summary, name) > 0, name
    assert _figure(summary, "calendar.size.mailboxes") == 2  # one Google, one Microsoft 365
    assert _figure(summary, "calendar.meetings_once") == 1
    assert _figure(summary, "calendar.shared_meetings_once") == 1
    assert _figure(summary, "calendar.after_changes.meetings_once") == 1
    assert _figure(summary, "calendar.steady.calls_per_changed") < 2  # about one listing per change (goal 1.1)
    assert _figure(summary, "calendar.burst.calls_saved_vs_naive") > 1
    assert _figure(summary, "calendar.baseline.naive_calls_per_event") >= 1
    assert _figure(summary, "calendar.push.runs") == 5  # new, edited, shared, across providers, Graph edit
    assert _figure(summary, "calendar.push.duplicates") == 0


def test_quick_matching_bench_prints_its_table():
    """Duplicate detection at quick sizes (5,000 against 500): every figure of the three
    field sets and both baselines is printed. Behaviour, not speed: names alone never
    auto-link, blocking finds nearly every true pair, and the index proposes what the
    all-pairs baseline proposes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "matching"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{output[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    summary = output.split("=== summary:", 1)[1]
    for config in ("names", "names_ids", "names_addr_bday"):
        p = f"matching.{config}"
        for name in ("precision_auto", "recall_auto", "precision_auto_or_review", "recall_auto_or_review",
                     "f1_auto_or_review", "pairs_completeness", "match_s", "index_build_s",
                     "sample_string_precision_auto_or_review", "sample_string_recall_auto_or_review",
                     "sample_all_pairs_extrapolated_s"):
            assert 0 <= _figure(summary, f"{p}.{name}")
        assert _figure(summary, f"{p}.pairs_completeness") >= 0.9
        assert _figure(summary, f"{p}.index_agrees_with_all_pairs") >= 0.9
    assert _figure(summary, "matching.names.recall_auto") == 0  # names alone never auto-link
    assert _figure(summary, "matching.names_addr_bday.precision_auto") >= 0.98
    assert _figure(summary, "matching.names_ids.precision_auto") >= 0.98
