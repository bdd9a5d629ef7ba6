"""Reconciliation, pure: compare what both ends hold now, independently of the sync's
own bookkeeping (the links say only which pairs are meant to match).

Input is read fresh from each end by the caller (a full mailbox listing, a full platform
listing); nothing here does I/O. The findings name records by id and fields by name;
`values` (what differs) is for the stored report only, never for workflow history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from sync.matching import Thresholds

#: item states that are final, or that wait on a person (a review) or a named rule
WAITING = ("skipped", "quarantined", "conflict", "duplicate", "deferred")
UNFINISHED = ("pending", "deferred")


@dataclass(frozen=True)
class LinkPair:
    link_id: int
    mailbox_id: str
    platform_id: str


@dataclass(frozen=True)
class ItemInfo:
    item_id: int
    status: str
    rule: str | None
    updated_at: float


@dataclass
class Findings:
    differing: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    unfinished: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"differing": len(self.differing), "missing": len(self.missing),
                "duplicates": len(self.duplicates), "unfinished": len(self.unfinished)}

    def as_json(self) -> dict:
        return {"differing": self.differing, "missing": self.missing, "duplicates": self.duplicates,
                "unfinished": self.unfinished}


_SPACE = re.compile(r"\s+")


def _norm_text(v: str) -> str:
    return _SPACE.sub(" ", v).strip()


def _norm_value(name: str, value: Any) -> Any:
    """What a field means, so that presentation (case of an address, spacing, phone
    punctuation) is not reported as a difference."""
    if isinstance(value, (tuple, list, set, frozenset)):
        return frozenset(_norm_value(name, v) for v in value)
    if isinstance(value, BaseModel):  # a typed email or phone, an address: by its parts
        dumped = value.model_dump(mode="json")
        if not isinstance(dumped, dict):
            return _norm_value(name, dumped)
        return tuple(sorted((k, _norm_value(name if k in ("address", "number") else k, v)) for k, v in dumped.items()))
    if isinstance(value, str):
        if "phone" in name:
            return re.sub(r"[^\d+]", "", value)
        if "email" in name:
            return value.strip().casefold()
        return _norm_text(value)
    return value


def differing_fields(a: Any, b: Any) -> list[str]:
    """Names of the fields in which two records of one kind differ in meaning."""
    names = list(type(a).model_fields)
    return [n for n in names if _norm_value(n, getattr(a, n)) != _norm_value(n, getattr(b, n))]


def _json(v: Any) -> Any:
    if isinstance(v, tuple):
        return [x.model_dump(mode="json") if isinstance(x, BaseModel) else x for x in v]
    return v


def compare(
    *,
    mailbox: dict[str, Any],
    platform: dict[str, Any],
    links: Iterable[LinkPair],
    in_scope: Callable[[str], bool],
    items: dict[tuple[str, str], ItemInfo],
    new_index: Callable[[], Any],
    thresholds: Thresholds = Thresholds(),
    now: float,
    stale_s: float,
    as_held: Callable[[Any, Any], tuple[Any, Any]] = lambda m, p: (m, p),
) -> Findings:
    """Compare both ends.

    `mailbox` / `platform`: live records' content by id (None: there, but unreadable) (the whole mailbox; the
    organisation's platform records). `in_scope(pid)`: whether an unlinked platform
    record should reach this mailbox. `items`: the store's items of this connection and
    kind, by (side, external id), to say whether something unpaired waits in a named
    state (then it is listed, not repaired). `as_held(m, p)`: both records of a pair as
    the sync compares them (what the mailbox cannot hold, or a direction keeps apart,
    is no difference); by default as they are.
    """
    f = Findings()
    links = list(links)
    linked_m = {lk.mailbox_id for lk in links}
    linked_p = {lk.platform_id for lk in links}

    # -- two links to one record ---------------------------------------------------
    for side, attr in (("mailbox", "mailbox_id"), ("platform", "platform_id")):
        seen: dict[str, int] = {}
        for lk in links:
            ext = getattr(lk, attr)
            if ext in seen:
                f.duplicates.append({"type": "two_links", "side": side, "external_id": ext,
                                     "link_ids": [seen[ext], lk.link_id]})
            else:
                seen[ext] = lk.link_id

    # -- linked pairs: both there and equal? ---------------------------------------
    for lk in links:
        gone = [s for s, there in (("mailbox", mailbox), ("platform", platform))
                if getattr(lk, f"{s}_id") not in there]
        if gone:
            f.missing.append({"type": "linked_gone", "link_id": lk.link_id, "mailbox_id": lk.mailbox_id,
                              "platform_id": lk.platform_id, "gone": gone, "repairable": True})
            continue
        m, p = mailbox[lk.mailbox_id], platform[lk.platform_id]
        if m is None or p is None:  # unreadable on a side (quarantined as malformed): nothing to compare
            continue
        m, p = as_held(m, p)
        names = differing_fields(m, p)
        if names:
            f.differing.append({"link_id": lk.link_id, "mailbox_id": lk.mailbox_id, "platform_id": lk.platform_id,
                                "fields": names,
                                "values": {n: {"mailbox": _json(getattr(m, n)), "platform": _json(getattr(p, n))}
                                           for n in names}})

    # -- unlinked records with no partner --------------------------------------------
    def unpaired(side: str, ext: str) -> None:
        item = items.get((side, ext))
        status = item.status if item else None
        f.missing.append({"type": "no_partner", "side": side, "external_id": ext, "item_status": status,
                          "rule": item.rule if item else None,
                          # waiting in a named state is visible already; otherwise re-stage
                          "repairable": status not in WAITING and status != "pending"})

    for mid in sorted(set(mailbox) - linked_m):
        unpaired("mailbox", mid)
    for pid in sorted(set(platform) - linked_p):
        if in_scope(pid):
            unpaired("platform", pid)

    # -- duplicates within one side --------------------------------------------------
    scoped_p = {pid: c for pid, c in platform.items() if pid in linked_p or in_scope(pid)}
    for side, records in (("mailbox", mailbox), ("platform", scoped_p)):
        index = new_index()
        records = {ext: c for ext, c in records.items() if c is not None}
        for ext, content in records.items():
            index.add(ext, content)
        pairs: set[tuple[str, str]] = set()
        for ext, content in sorted(records.items()):
            match = index.best(content, thresholds, exclude={ext})
            if match.kind == "auto" and match.key is not None:
                pair = tuple(sorted((ext, match.key)))
                if pair not in pairs:
                    pairs.add(pair)
                    f.duplicates.append({"type": "same_person", "side": side, "external_ids": list(pair),
                                         "score": round(match.score, 3)})

    # -- items not in a final state for too long --------------------------------------
    for (side, ext), item in sorted(items.items(), key=lambda kv: kv[1].item_id):
        if item.status in UNFINISHED and now - item.updated_at >= stale_s:
            f.unfinished.append({"item_id": item.item_id, "side": side, "external_id": ext, "status": item.status,
                                 "rule": item.rule, "age_s": round(now - item.updated_at, 1)})
    return f
