"""The contacts kind's pure rules: what the generic core asks of a contact."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache, partial

from models.contact import Contact
from sync import fields
from sync.fixes import apply_fix_rules
from sync.kinds import KindRules
from sync.matching import CandidateIndex, score
from sync.normalize import DEFAULT_REGION, blocking_keys, contact_problems
from sync.policy import SyncSettings


def _problems(contact: Contact, settings: SyncSettings) -> list[str]:
    return contact_problems(contact, max_field_len=settings.max_field_len)


def _bind(rules: KindRules, settings: SyncSettings) -> KindRules:
    return _for_region(rules, settings.phone_region)


@lru_cache(maxsize=64)
def _for_region(rules: KindRules, region: str) -> KindRules:
    """National phone numbers ("(415) 555-0134", "020 7946 0958") are read in the
    organisation's region: keys, scores and indexes all the same way."""
    if region == DEFAULT_REGION:
        return rules
    return replace(rules, keys=partial(blocking_keys, region=region), score=partial(score, region=region),
                   new_index=partial(CandidateIndex, region=region), bind=None)


def _align(base, mailbox, platform, settings: SyncSettings, mailbox_holds: fields.Holds | None):
    return fields.align(base, mailbox, platform, settings.field_map, mailbox_holds=mailbox_holds or fields.Holds(),
                        platform_holds_=fields.platform_holds(settings.field_map))


CONTACTS: KindRules[Contact] = KindRules(
    name="contacts",
    model=Contact,
    problems=_problems,
    keys=blocking_keys,
    new_index=CandidateIndex,
    score=score,
    fix=apply_fix_rules,
    align=_align,
    keep=lambda side, base, merged, settings: fields.keep_for(side, base, merged, settings.field_map),
    outbound=lambda content, target, settings: fields.outbound(content, target, settings.field_map),
    differs=fields.differs,
    bind=_bind,
    # 2: names keyed by their normalised parts (old "t:" and single "n:" keys gone)
    # 4: a given name starting with a particle (Ó, de, van: swapped fields) keeps it
    keys_version="4",
    keys_settings=lambda settings: f"region={settings.phone_region}",
)
