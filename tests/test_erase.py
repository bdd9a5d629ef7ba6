"""GDPR erase: the store keeps no trace of the address, the platform record is deleted,
the mailbox is untouched by default and emptied of the person with the delete policy,
and the audit entry holds no personal data."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from platforms.reference_crm.adapter import ReferenceCrmContacts
from store import repo
from store.schema import metadata
from tests.e2e_rig import rig
from workers import cli
from workers import client as api
from workers.mailboxes import MailboxBuilder


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


def _traces(sessions, needle: str) -> list[str]:
    """Tables whose rows mention `needle` anywhere (case-insensitive)."""
    found = []
    with sessions() as s:
        for table in metadata.sorted_tables:
            for row in s.execute(sa.select(table)):
                if needle.casefold() in json.dumps(dict(row._mapping), default=str).casefold():
                    found.append(table.name)
                    break
    return found


async def test_erase_keeps_the_mailbox_by_default_and_deletes_it_when_asked(temporal_env, urls, capsys):
    store_url, crm_url = urls
    async with rig(temporal_env, store_url, crm_url, provider="google") as r:
        await r.start()
        await r.cycle()
        links = r.links()
        mailbox = r.mailbox_contacts()
        people = [(m, links[m], mailbox[m].email_addresses()[0]) for m in r.sc.resource_names
                  if m in links and mailbox[m].emails]
        (m1, p1, addr1), (m2, p2, addr2) = people[0], people[1]
        assert _traces(r.sc.sessions, addr1)  # the store holds the person before

        # Default: the mailbox keeps its contact; store and platform forget the person.
        platform = ReferenceCrmContacts(crm_url)
        res = api.erase_person(r.sc.sessions, platform, MailboxBuilder(r.sc.sessions, None), r.sc.org_id,
                               addr1.upper())
        assert res.platform_deleted >= 1 and res.mailbox_deleted == 0
        assert _traces(r.sc.sessions, addr1) == []
        assert r.sc.crm.get_contact(r.sc.org_id, p1) is None
        assert not [c for c in r.crm_contacts().values() if addr1.casefold() in {e.casefold() for e in c.email_addresses()}]
        assert m1 in r.mailbox_contacts()
        with r.sc.sessions() as s:
            entries = [e for e in repo.audit_entries(s, org_id=r.sc.org_id) if "erase" in (e.detail or {})]
        assert len(entries) == 1 and entries[0].detail["erase"]["address_sha256"] == res.address_hash
        assert entries[0].detail["erase"]["mailbox_policy"] == "keep"

        # Sync goes on: the platform's deletion is read, nothing comes back, no trace returns,
        # even when the user then edits the contact the erase left in the mailbox.
        await r.cycle()
        r.sc.mailbox.edit(m1, job_title="Still here")
        st = await r.cycle()
        assert _traces(r.sc.sessions, addr1) == []
        assert st.store.skipped_by_rule.get("erased_person") == 1
        assert m1 in r.mailbox_contacts()
        assert not [c for c in r.crm_contacts().values() if addr1.casefold() in {e.casefold() for e in c.email_addresses()}]

        # With the delete policy, through the CLI: the mailbox's contact goes too.
        rc = cli.run(["erase", "--org", r.sc.org_id, "--email", addr2, "--mailbox-policy", "delete",
                      "--store-url", store_url, "--crm-url", crm_url])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert addr2.casefold() not in out.out.casefold()
        doc = json.loads(out.out)
        assert doc["mailbox_deleted"] >= 1 and doc["platform_deleted"] >= 1
        assert m2 not in r.mailbox_contacts()
        assert r.sc.crm.get_contact(r.sc.org_id, p2) is None
        assert _traces(r.sc.sessions, addr2) == []

        # Errors: one line, non-zero.
        rc = cli.run(["erase", "--org", "no-such-org", "--email", addr2, "--store-url", store_url,
                      "--crm-url", crm_url])
        err = capsys.readouterr().err
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "no-such-org" in err
