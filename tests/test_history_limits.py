"""What crosses workflow history stays small however much waits in the store.

Open reviews and quarantined items grow with a mailbox (a first sync of a messy
address book opens thousands). Their ids travel as counts plus the first few; the
full lists are read from the store (`concord reviews`, `concord quarantine`).
"""

from __future__ import annotations

import base64

import pytest

from store import repo
from tests.e2e_rig import rig

#: generous for a summary of counts and 20 ids; 5,000 ids would be about 30 KB
MAX_PAYLOAD_BYTES = 4096


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


def _payload_sizes(node, out: list[int]) -> list[int]:
    if isinstance(node, dict):
        if "data" in node and "metadata" in node and isinstance(node["data"], str):
            out.append(len(base64.b64decode(node["data"])))
        for v in node.values():
            _payload_sizes(v, out)
    elif isinstance(node, list):
        for v in node:
            _payload_sizes(v, out)
    return out


async def test_five_thousand_open_reviews_keep_every_history_payload_small(temporal_env, urls):
    async with rig(temporal_env, *urls) as r:
        before = len((await r.start()).model_dump_json())
        with r.sc.sessions.begin() as s:
            for i in range(5000):
                repo.open_review(s, connection_id=r.cid, kind="conflict" if i % 2 else "duplicate",
                                 mailbox_id=f"m-{i}", fields=["company"], detail={})
        st = await r.cycle()
        assert st.store.open_conflict_count == 2500 and st.store.open_duplicate_count >= 2500
        assert len(st.store.open_conflicts) <= 20 and len(st.store.open_duplicates) <= 20
        history = (await r.client.get_workflow_handle(f"mailbox-sync/{r.cid}").fetch_history()).to_json_dict()
        sizes = _payload_sizes(history, [])
        assert sizes and max(sizes) <= MAX_PAYLOAD_BYTES, sorted(sizes)[-3:]
        # The state query answers with the same bounded shape: 5,000 reviews add their counts
        # and 20 ids each, not 5,000 entries. (The state itself, with its per-kind sections and
        # health metrics, is a few KiB whatever the store holds.)
        after = len(st.model_dump_json())
        assert after - before <= 1024, (before, after)
        assert after <= 2 * MAX_PAYLOAD_BYTES
