"""What gets logged, decided per organisation and adjusted per user.

An organisation sets the policy; a user may adjust the parts that are about their
own mailbox (what to capture, how much of it others may see, how far back). The
parts that protect the organisation as a whole - its own domains, the lists of
role and free-mail addresses, what happens on ambiguity or deletion, attachments -
are the organisation's alone, so a user setting one of them is refused rather than
silently ignored. A user's blocklist adds to the organisation's: a user can hide
more of their mail, never un-hide what the organisation blocked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, computed_field, field_validator

from models.mail import Visibility
from sync.normalize import FREE_MAIL_DOMAINS

DAY = 86_400.0

ROLE_ADDRESSES: tuple[str, ...] = (
    "noreply", "no-reply", "no_reply", "donotreply", "do-not-reply", "do_not_reply",
    "info", "support", "help", "helpdesk", "sales", "billing", "invoices", "accounts", "admin",
    "administrator", "postmaster", "hostmaster", "webmaster", "abuse", "mailer-daemon", "bounce",
    "bounces", "notifications", "notification", "alerts", "newsletter", "news", "marketing",
    "hello", "contact", "team", "office", "enquiries", "inquiries", "feedback", "jobs", "careers",
    "hr", "press", "privacy", "security", "service", "orders", "reply", "root",
)
"""Local parts that name a function, not a person: never captured as a lead."""

_MORE_FREE_MAIL = frozenset(
    {
        "gmx.at", "gmx.ch", "gmx.fr", "gmx.co.uk", "gmx.es", "gmx.it",
        "yandex.ua", "yandex.by", "yandex.kz", "yandex.com.tr", "ya.ru",
        "hotmail.es", "outlook.es", "outlook.it", "live.de", "live.it", "live.nl",
        "yahoo.com.au", "yahoo.ca", "yahoo.in", "yahoo.com.br",
        "inbox.ru", "list.ru", "bk.ru", "rambler.ru", "sina.com", "yeah.net", "foxmail.com",
        "seznam.cz", "wp.pl", "o2.pl", "onet.pl", "interia.pl", "daum.net", "hanmail.net",
    }
)
FREE_MAIL: tuple[str, ...] = tuple(sorted(FREE_MAIL_DOMAINS | _MORE_FREE_MAIL))
"""Consumer mail domains, as exact domains: a shared one says nothing about a company."""

#: what a user may set for their own mailbox; everything else is the organisation's
USER_KEYS: frozenset[str] = frozenset(
    {"capture", "label", "on_label_removed", "backfill_days", "new_only", "blocklist", "auto_create",
     "create_kind", "visibility"}
)


def _domains(values: object) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:  # type: ignore[union-attr]
        s = str(v).strip().lower().lstrip("@").rstrip(".")
        if s and s not in out:
            out.append(s)
    return tuple(out)


class MailPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: known: mail with anyone the platform knows; label: only mail under `label`
    #: (also when the label is added later); sent: only mail the user sent
    capture: Literal["known", "label", "sent"] = "known"
    label: str = "CRM"
    on_label_removed: Literal["keep", "remove"] = "keep"
    #: how far before connecting history is logged; None: no limit (unless new_only)
    backfill_days: int | None = None
    #: with backfill_days None: only mail from the moment of connecting on
    new_only: bool = False
    own_domains: tuple[str, ...] = ()
    #: addresses (a@b.com) or domains (b.com, @b.com; subdomains included)
    blocklist: tuple[str, ...] = ()
    role_addresses: tuple[str, ...] = ROLE_ADDRESSES
    free_mail_domains: tuple[str, ...] = FREE_MAIL
    auto_create: Literal["never", "sent", "sent_and_received"] = "sent"
    create_kind: Literal["lead", "contact"] = "lead"
    visibility: Visibility = "metadata"
    attachments: bool = False
    on_delete: Literal["keep", "remove"] = "keep"
    ambiguity: Literal["ask", "all", "none"] = "ask"

    @field_validator("own_domains", "blocklist", "role_addresses", "free_mail_domains", mode="before")
    @classmethod
    def _lowered(cls, v: object) -> tuple[str, ...]:
        return _domains(v)

    @field_validator("backfill_days")
    @classmethod
    def _non_negative(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("backfill_days must be 0 or more")
        return v

    @computed_field  # type: ignore[prop-decorator]
    @property
    def bodies(self) -> bool:
        """Bodies are fetched only when someone may read them: anything less is
        metadata-only mode, and a body never fetched cannot leak."""
        return self.visibility == "full"

    @classmethod
    def for_user(cls, org_settings: dict | None, user_settings: dict | None) -> "MailPolicy":
        org = dict(org_settings or {})
        user = dict(user_settings or {})
        allowed = set(cls.model_fields)
        for where, settings in (("organisation", org), ("user", user)):
            for key in settings:
                if key not in allowed:
                    raise ValueError(f"unknown mail setting {key!r} in the {where} settings")
        for key in user:
            if key not in USER_KEYS:
                raise ValueError(f"mail setting {key!r} is set by the organisation only, not per user")
        merged = {**org, **user}
        if "blocklist" in user:
            merged["blocklist"] = _domains(org.get("blocklist")) + _domains(user["blocklist"])
        try:
            return cls(**merged)
        except ValidationError as e:
            names = sorted({str(err["loc"][0]) for err in e.errors() if err.get("loc")})
            raise ValueError(f"invalid mail setting(s) {', '.join(names)}: {e}") from None

    def window_start(self, connected_at: float, now: float) -> float | None:
        """The earliest message time that is logged, or None for no limit.

        Counted back from `connected_at`, not from `now`, so the window does not slide:
        a message inside it when the mailbox connected stays inside it (a label added
        a month later still logs it). Clamped to `now` so a clock ahead of us cannot
        open a window in the future that holds back today's mail.
        """
        if self.backfill_days is not None:
            start = connected_at - self.backfill_days * DAY
        elif self.new_only:
            start = connected_at
        else:
            return None
        return min(start, now)
