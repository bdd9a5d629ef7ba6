"""The email-logging stages of `make demo`: mail flows between an organisation's four
mailboxes (two Gmail, two Microsoft 365) and its prospects, and each stage prints what
a CRM user now sees. `tests/test_mail_e2e.py` runs the same stages and checks them.

Every stage wakes the mailboxes the way a push notification would (`sync_now`: the
organisation's workflow reads the platform, each mailbox cycles) and reads the result
from the reference CRM, never from workflow history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from models.mail_log import Association
from store import repo
from workers import client as api
from workers.mail_scenario import MailScenario, message
from workers.stages import Stages


@dataclass
class Observed:
    """Ids each stage produced, for the test to check on the platform."""

    first_id: str = ""
    reply_id: str = ""
    ambiguous_id: str = ""
    ambiguous_item: str = ""
    bulk_item: str = ""
    intro_id: str = ""
    lead_id: str = ""
    review_id: int | None = None
    label_item: str = ""
    label_id: str = ""
    label_rule_before: str = ""
    private_id: str = ""
    converted_contact: str = ""
    reply_item: str = ""
    reply_message_id: str = ""
    pat_answer_id: str = ""
    bad_item: str = ""
    #: strings that must never appear in workflow history
    secrets: list[str] = field(default_factory=list)


#: what the scenario's mailboxes sync: their mail, and the platform's outbox
KINDS = ["mail", "send"]


class MailStages(Stages):
    kinds = KINDS

    def __init__(self, client, sc: MailScenario, say: Callable[[str], None], **kwargs) -> None:
        super().__init__(client, sc, say, **kwargs)
        self.seen = Observed()

    def item(self, who: str, mailbox_id: str):
        with self.sc.sessions() as s:
            rows = repo.get_items(s, self.sc.connections[who], "mailbox", [mailbox_id], kind="mail")
        return rows.get(mailbox_id)

    def activity(self, key: str):
        return self.sc.crm.mail.get_activity_by_key(self.sc.org_id, key)

    def show(self, key: str) -> None:
        act = self.activity(key)
        if act is None:
            self.say("   not logged")
            return
        names = {self.sc.pat.id: "Pat Prospect (contact)", self.sc.northwind.id: "Northwind Traders (account)",
                 self.sc.deal.id: "Northwind renewal (opportunity)", self.sc.contoso_east.id: "Contoso East (account)",
                 self.sc.contoso_west.id: "Contoso West (account)"}
        on = ", ".join(names.get(a.object_id, f"{a.object_type} {a.object_id}") for a in act.associations) or "nothing"
        subject = act.subject if act.subject is not None else "(hidden)"
        self.say(f"   activity {act.id}: subject {subject!r}, visibility {act.visibility}, "
                 f"users {', '.join(act.users)}, on {on}")

    # -- the stages ----------------------------------------------------------------
    async def run(self) -> Observed:
        await self.start()
        await self.shared_thread()
        await self.associations_and_capture()
        await self.label_later()
        await self.private_thread()
        await self.conversion()
        await self.two_way_send()
        return self.seen

    async def shared_thread(self) -> None:
        sc, o = self.sc, self.seen
        pat = "Pat Prospect <pat@northwind.example>"
        first, o.first_id = message(pat, [sc.address("ann"), sc.address("bob")], "Renewal pricing", "Our budget is 48k")
        reply, o.reply_id = message(sc.address("ann"), [pat], "Re: Renewal pricing", "We can do 45k",
                                    cc=[sc.address("bob")], references=[o.first_id])
        o.secrets += ["Renewal pricing", "Our budget is 48k", "We can do 45k", "pat@northwind.example"]
        sc.deliver("ann", first)
        sc.deliver("bob", first)
        sc.deliver("ann", reply, sent=True)
        sc.deliver("bob", reply)
        await self.sync("ann", "bob")
        self.say("\n== mail 1: Pat writes to Ann (Gmail) and Bob (Outlook); Ann answers, Bob in copy")
        self.say("   both mailboxes hold both messages; each is logged once, with both users:")
        self.show(o.first_id)
        self.show(o.reply_id)

    async def associations_and_capture(self) -> None:
        sc, o = self.sc, self.seen
        pat = "Pat Prospect <pat@northwind.example>"
        amb, o.ambiguous_id = message(pat, [sc.address("ann"), "Lee <lee@contoso.example>"], "Intro to Contoso",
                                      "meet Lee")
        bulk, _ = message("Northwind News <news@northwind.example>", [sc.address("ann")], "Monthly digest", "deals",
                          headers={"List-Unsubscribe": "<mailto:unsub@northwind.example>", "Precedence": "bulk"})
        intro, o.intro_id = message(sc.address("ann"), ["Jane Doe <jane.doe@newco.example>"], "Hello from Acme", "hi")
        o.secrets += ["Intro to Contoso", "lee@contoso.example", "Monthly digest", "Hello from Acme",
                      "jane.doe@newco.example", "Jane Doe"]
        o.ambiguous_item = sc.deliver("ann", amb)
        o.bulk_item = sc.deliver("ann", bulk)
        sc.deliver("ann", intro, sent=True)
        await self.sync("ann")
        self.say("\n== mail 2: associations, a review, a captured lead, bulk mail skipped")
        item = self.item("ann", o.ambiguous_item)
        o.review_id = item.review_id
        self.say("   Pat copies Lee of contoso.example, a domain two accounts share: logged on what is certain, "
                 f"the account waits in review {o.review_id}:")
        self.show(o.ambiguous_id)
        bulk_row = self.item("ann", o.bulk_item)
        self.say(f"   a newsletter (List-Unsubscribe, Precedence: bulk): {bulk_row.status}, rule {bulk_row.rule!r}")
        people = sc.platform.people_by_email(sc.org_id, ["jane.doe@newco.example"]).get("jane.doe@newco.example", [])
        if people and people[0].kind == "lead":
            lead = people[0]
            o.lead_id = lead.id
            self.say(f"   Ann writes to Jane Doe, unknown to the CRM: lead {lead.id} {lead.name!r} captured "
                     "(capture rule 'sent'), the mail logged on it:")
            self.show(o.intro_id)
        elif people:  # a kept CRM (--keep): an earlier run captured and converted her
            self.say(f"   Ann writes to Jane Doe, a contact since an earlier run converted her lead "
                     f"({people[0].id}): the mail is logged on the contact:")
            self.show(o.intro_id)
        if o.review_id is not None:
            self.say(f"   answering review {o.review_id} with 'attach' (signal 'resolve': review id and choice only)")
            await api.resolve(self.client, sc.sessions, sc.connections["ann"], o.review_id, "attach")
            await self.sync("ann")
            self.show(o.ambiguous_id)

    async def label_later(self) -> None:
        sc, o = self.sc, self.seen
        mail, o.label_id = message("Pat Prospect <pat@northwind.example>", [sc.address("cy")], "Contract draft",
                                   "see attached")
        o.secrets += ["Contract draft"]
        o.label_item = sc.deliver("cy", mail)
        await self.sync("cy")
        o.label_rule_before = self.item("cy", o.label_item).rule
        self.say("\n== mail 3: Cy logs only mail he labels \"CRM\"")
        self.say(f"   Pat's contract draft arrives unlabelled: rule {o.label_rule_before!r}, not logged")
        sc.label("cy", o.label_item, "CRM")
        await self.sync("cy")
        self.say(f"   Cy labels it \"CRM\" (Gmail history: labelAdded): rule {self.item('cy', o.label_item).rule!r}")
        self.show(o.label_id)

    async def private_thread(self) -> None:
        sc, o = self.sc, self.seen
        mail, o.private_id = message("Pat Prospect <pat@northwind.example>", [sc.address("ann"), sc.address("dee")],
                                     "Personal matter", "private words")
        o.secrets += ["Personal matter", "private words"]
        sc.deliver("ann", mail)
        sc.deliver("dee", mail)
        await self.sync("ann")
        self.say("\n== mail 4: a thread Ann shares with Dee, whose mail is private")
        self.say("   Ann's mailbox logs it first; Ann logs subjects, but Dee (a connected colleague on the message)")
        self.say("   keeps hers private, and the most restrictive level applies from the first write:")
        self.show(o.private_id)
        await self.sync("dee")
        self.say("   Dee's copy joins as a participant; the subject was never sent to the CRM:")
        self.show(o.private_id)

    async def conversion(self) -> None:
        sc, o = self.sc, self.seen
        if not o.lead_id:
            return
        conv = sc.crm.mail.convert_lead(sc.org_id, o.lead_id)
        o.converted_contact = conv.contact_id
        await api.wake_org(self.client, sc.org_id, "lead converted")
        want = Association(object_type="contact", object_id=conv.contact_id)
        for _ in range(200):
            act = self.activity(o.intro_id)
            if act is not None and want in act.associations:
                break
            await asyncio.sleep(0.05)
        self.say(f"\n== mail 5: the CRM converts lead {o.lead_id} to contact {conv.contact_id}; "
                 "the organisation's workflow moves its mail:")
        self.show(o.intro_id)

    async def two_way_send(self) -> None:
        sc, o = self.sc, self.seen
        outbox = sc.crm.outbox
        item = outbox.reply(sc.org_id, "ann", o.first_id, text="Thanks Pat, 46k works for us.",
                            user_email=sc.people["ann"].email)
        o.reply_item = item.id
        o.secrets += ["46k works for us"]
        await self.sync("ann")
        sent = self.outgoing(item.id)
        o.reply_message_id = sent.message_id or ""
        self.say("\n== send 1: Ann replies to Pat from the CRM record; it goes out through her Gmail")
        self.say(f"   outbox item {item.id}: {sent.state}, Gmail message {sent.provider_message_id} in thread "
                 f"{sent.provider_thread_id} (the thread of Pat's first message), logged once on the record:")
        self.show(o.reply_message_id)
        answer, o.pat_answer_id = message("Pat Prospect <pat@northwind.example>", [sc.address("ann")],
                                          "Re: Renewal pricing", "Deal. Send the contract.",
                                          references=[o.first_id, o.reply_message_id])
        o.secrets += ["Deal. Send the contract."]
        sc.deliver("ann", answer)
        await self.sync("ann")
        self.say("   Pat answers; Ann's mailbox logs it on the same record:")
        self.show(o.pat_answer_id)
        bad = outbox.queue(sc.org_id, "ann", to=[{"email": "pat@northwind", "name": "Typo"}], subject="Contract",
                           text="attached")
        o.bad_item = bad.id
        await self.sync("ann")
        failed = self.outgoing(bad.id)
        self.say(f"\n== send 2: a message to a mistyped address: outbox item {bad.id} {failed.state}, "
                 f"reason {failed.reason!r} (never retried)")

    def outgoing(self, item_id: str):
        return self.sc.crm.outbox.get(self.sc.org_id, item_id)
