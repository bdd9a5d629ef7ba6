"""The mailbox providers, in one place: nothing else switches on a provider's name.

A `Provider` says everything the rest of the code used to decide with
`if provider == "google"`: how its OAuth connector is built from the deployment's
`ProviderConfig`, how its contacts connector is built (vault tokens, or a static
emulator token), where its API lives, which push subscription each kind of data
needs (`push`: contacts, mail, calendar; none: the poll timer only), which subscription kinds its mailboxes may hold, and whether a
grant can be revoked at the provider or only forgotten.

Subscription kinds (the `subscriptions.provider` column) name what a push
notification comes from; they get the same treatment (`SubscriptionKind`).

The names are also data in the store (CHECK constraints in store/schema.py and the
migrations); tests/test_layering.py checks both lists agree. A provider module
(connectors/google_*, graph_*, oauth_*) is imported only when its provider is used.

Adding a provider: its connector modules, one `Provider(...)` below, the name in
store/schema.py (with a migration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from models.errors import Fatal


class UnknownProvider(Fatal):
    """A provider name no entry of the registry carries (a typo, or data from elsewhere)."""

    code = "unknown_provider"


# ------------------------------------------------------------ subscription kinds


def _graph_stop(external_id: str, resource: str, settings: dict) -> tuple[str, str, dict | None]:
    base = (settings.get("graph_endpoint") or settings.get("endpoint") or GRAPH_ENDPOINT).rstrip("/")
    base = base if base.endswith("/v1.0") else base + "/v1.0"
    return "DELETE", f"{base}/subscriptions/{external_id}", None


def _gmail_stop(external_id: str, resource: str, settings: dict) -> tuple[str, str, dict | None]:
    base = (settings.get("gmail_endpoint") or GMAIL_ENDPOINT).rstrip("/")
    return "POST", f"{base}/gmail/v1/users/me/stop", None


def _calendar_stop(external_id: str, resource: str, settings: dict) -> tuple[str, str, dict | None]:
    base = (settings.get("calendar_endpoint") or CALENDAR_ENDPOINT).rstrip("/")
    return "POST", f"{base}/channels/stop", {"id": external_id, "resourceId": resource}


@dataclass(frozen=True)
class SubscriptionKind:
    """A kind of push subscription a mailbox holds at its provider."""

    name: str
    #: where the provider posts its notifications (under the public base URL)
    webhook_path: str
    #: (external id, resource, connection settings) -> (method, url, json body) that stops it
    stop_call: Callable[[str, str, dict], tuple[str, str, dict | None]]


GMAIL_ENDPOINT = "https://gmail.googleapis.com/"
CALENDAR_ENDPOINT = "https://www.googleapis.com/calendar/v3/"
GRAPH_ENDPOINT = "https://graph.microsoft.com/"
GOOGLE_PEOPLE_ENDPOINT = "https://people.googleapis.com/"

#: Graph change notifications (contacts and messages)
GRAPH_SUBSCRIPTION = SubscriptionKind("microsoft", "/webhooks/graph", _graph_stop)
#: Gmail users.watch, pushed through Pub/Sub
GMAIL_WATCH = SubscriptionKind("google_gmail", "/webhooks/gmail", _gmail_stop)
#: Calendar events.watch channels
CALENDAR_CHANNEL = SubscriptionKind("google_calendar", "/webhooks/calendar", _calendar_stop)

SUBSCRIPTION_KINDS: dict[str, SubscriptionKind] = {k.name: k for k in (GRAPH_SUBSCRIPTION, GMAIL_WATCH, CALENDAR_CHANNEL)}


@dataclass(frozen=True)
class PushNeed:
    """The push subscription one kind of data needs at one provider; `subscriptions.maintain`
    keeps one live per (connection, need).

    `mode` says how it is kept:

    - "subscription" (Graph): created with a clientState secret and a lifecycle URL under
      the public base URL, renewed in place before it expires, subscribed again when the
      provider removed it. Rows are told apart by `resource` (a mailbox may hold a
      contacts and a messages subscription at once).
    - "watch" (Gmail users.watch): one per mailbox, issued again (same topic) once a day,
      keyed by the sha256 of the mailbox's address, no secret (Pub/Sub push is
      authenticated at the endpoint); the target is a Pub/Sub topic, not our URL.

    The calls are the kind's own connector's (`Provider.push["mail"]`: the mail
    connector's `create_subscription` or `watch`).
    """

    kind: SubscriptionKind
    mode: str
    #: what the subscription watches; for "subscription" mode also what tells its rows apart
    resource: str | None = None


def subscription_kind(name: str) -> SubscriptionKind:
    try:
        return SUBSCRIPTION_KINDS[name]
    except KeyError:
        raise UnknownProvider(f"unknown mailbox subscription kind {name!r}") from None


# -------------------------------------------------------------------- providers


def _google_oauth(cfg, *, pending, vault, clock):
    from connectors.oauth_google import GoogleOAuth

    if not cfg.google_client_id:
        raise Fatal("CONCORD_GOOGLE_CLIENT_ID is not configured")
    return GoogleOAuth(
        cfg.google_client_id, cfg.google_client_secret, cfg.redirect_uri(GOOGLE.name),
        pending=pending, capabilities=cfg.capabilities, auth_uri=cfg.google_auth_uri,
        token_uri=cfg.google_token_uri, revoke_uri=cfg.google_revoke_uri, certs_uri=cfg.google_certs_uri,
        http=cfg.http, vault=vault, clock=clock,
    )


def _google_contacts(credentials, connection_id: str, settings: dict, **tuning):
    from connectors.google_people import GooglePeopleContacts

    creds = credentials.google_credentials(connection_id, settings)
    return GooglePeopleContacts(settings.get("endpoint") or GOOGLE_PEOPLE_ENDPOINT, creds, **tuning)


def _google_static_contacts(endpoint: str | None, token: str, **tuning):
    from connectors.google_people import GooglePeopleContacts

    return GooglePeopleContacts.for_emulator(endpoint or GOOGLE_PEOPLE_ENDPOINT, token=token, **tuning)


def _microsoft_oauth(cfg, *, pending, vault, clock):
    from connectors.oauth_microsoft import MicrosoftOAuth

    if not cfg.ms_client_id:
        raise Fatal("CONCORD_MS_CLIENT_ID is not configured")
    return MicrosoftOAuth(
        cfg.ms_client_id, cfg.ms_client_secret, cfg.redirect_uri(MICROSOFT.name),
        pending=pending, authority=cfg.ms_authority, capabilities=cfg.capabilities,
        http=cfg.http, vault=vault, clock=clock,
    )


def _microsoft_contacts(credentials, connection_id: str, settings: dict, **tuning):
    from connectors.credentials import PresentedToken, RefreshOn401
    from connectors.graph_contacts import GraphContacts

    source = credentials.token_source(connection_id, provider=MICROSOFT.name, settings=settings)
    presented = PresentedToken(source)
    graph = GraphContacts(settings.get("endpoint") or GRAPH_ENDPOINT, presented, mailbox_key=connection_id,
                          **tuning)
    return RefreshOn401(graph, presented)


def _microsoft_static_contacts(endpoint: str | None, token: str, **tuning):
    from connectors.graph_contacts import GraphContacts

    return GraphContacts(endpoint or GRAPH_ENDPOINT, lambda: token, **tuning)


#: a pacing wait heartbeats this often (as activities.pacing's waits do)
_HEARTBEAT_EVERY_S = 2.0


def _heartbeat_sleep(seconds: float) -> None:
    """A pacing wait inside an activity: heartbeating, so a minute of quota waiting is not
    taken for a lost worker. (Connectors sit below activities: temporalio directly, not
    activities.pacing.)"""
    import time

    from temporalio import activity

    end = time.monotonic() + seconds
    in_activity = activity.in_activity()
    while (left := end - time.monotonic()) > 0:
        if in_activity:
            activity.heartbeat()
        time.sleep(min(left, _HEARTBEAT_EVERY_S))


def _google_mail(credentials, connection_id: str, settings: dict, options, **tuning):
    from connectors.gmail_mail import GmailMail

    creds = credentials.google_credentials(connection_id, settings)
    return GmailMail(settings.get("gmail_endpoint") or GMAIL_ENDPOINT, creds, options=options, account=connection_id,
                     wait=_heartbeat_sleep, **tuning)


def _google_static_mail(settings: dict, token: str, account: str, options, **tuning):
    from connectors.gmail_mail import GmailMail

    return GmailMail.for_emulator(settings.get("gmail_endpoint") or GMAIL_ENDPOINT, token=token, options=options,
                                  account=account, wait=_heartbeat_sleep, **tuning)


def _microsoft_mail(credentials, connection_id: str, settings: dict, options, **tuning):
    from connectors.credentials import PresentedToken, RefreshOn401
    from connectors.graph_mail import GraphMail

    presented = PresentedToken(credentials.token_source(connection_id, provider=MICROSOFT.name, settings=settings))
    graph = GraphMail(settings.get("endpoint") or GRAPH_ENDPOINT, presented, options=options,
                      mailbox_key=connection_id, **tuning)
    return RefreshOn401(graph, presented)


def _microsoft_static_mail(settings: dict, token: str, account: str, options, **tuning):
    from connectors.graph_mail import GraphMail

    return GraphMail(settings.get("endpoint") or GRAPH_ENDPOINT, lambda: token, options=options, mailbox_key=account,
                     **tuning)


def _google_calendar(credentials, connection_id: str, settings: dict, **tuning):
    from connectors.google_calendar import GoogleCalendar

    creds = credentials.google_credentials(connection_id, settings)
    return GoogleCalendar(settings.get("calendar_endpoint") or CALENDAR_ENDPOINT, creds, account=connection_id,
                          **tuning)


def _google_static_calendar(settings: dict, token: str, account: str, **tuning):
    from connectors.google_calendar import GoogleCalendar

    return GoogleCalendar.for_emulator(settings.get("calendar_endpoint") or CALENDAR_ENDPOINT, token=token,
                                       account=account, **tuning)


def _no_calendar(*args: Any, **kwargs: Any):
    raise Fatal("this provider has no calendar connector yet")


@dataclass(frozen=True)
class Provider:
    """One mailbox provider. `name` is what connections, routes and search attributes carry."""

    name: str
    display_name: str
    #: (ProviderConfig, pending=, vault=, clock=) -> the OAuth connector (start, finish, refresh, revoke)
    oauth: Callable[..., Any]
    #: (CredentialFactory, connection id, connection settings, **tuning) -> MailboxContacts on vault tokens
    contacts: Callable[..., Any]
    #: (endpoint or None, static token, **tuning) -> MailboxContacts (emulators and the demo only)
    static_contacts: Callable[..., Any]
    #: (CredentialFactory, connection id, settings, MailFetchOptions) -> MailboxMail on vault tokens
    mail: Callable[..., Any]
    #: (settings, static token, account, MailFetchOptions) -> MailboxMail (emulators and the demo only)
    static_mail: Callable[..., Any]
    #: the push subscription that carries contact changes; None: the poll timer only
    contacts_push: SubscriptionKind | None
    #: the push each kind of data needs ("contacts", "mail", ...); a kind not named: poll only
    push: dict[str, PushNeed]
    #: the subscription kinds this provider's mailboxes may hold (stopped on disconnect)
    subscription_kinds: tuple[SubscriptionKind, ...]
    #: True: the grant can be revoked at the provider; False: only our copy of the tokens can go
    revokes: bool
    #: (CredentialFactory, connection id, settings, **tuning) -> MailboxSide[Event] on vault tokens
    calendar: Callable[..., Any] = _no_calendar
    #: (settings, static token, account, **tuning) -> MailboxSide[Event] (emulators and the demo only)
    static_calendar: Callable[..., Any] = _no_calendar


GOOGLE = Provider(
    name="google",
    display_name="Google",
    oauth=_google_oauth,
    contacts=_google_contacts,
    static_contacts=_google_static_contacts,
    mail=_google_mail,
    static_mail=_google_static_mail,
    contacts_push=None,  # People API has no push for contacts
    # Calendar channels are kept like Graph subscriptions (a public URL and a secret, the
    # channel token); the row's resource is the channel's resourceId, which channels/stop needs.
    push={"mail": PushNeed(GMAIL_WATCH, "watch"), "calendar": PushNeed(CALENDAR_CHANNEL, "subscription")},
    subscription_kinds=(GMAIL_WATCH, CALENDAR_CHANNEL),
    revokes=True,
    calendar=_google_calendar,
    static_calendar=_google_static_calendar,
)

MICROSOFT = Provider(
    name="microsoft",
    display_name="Microsoft 365",
    oauth=_microsoft_oauth,
    contacts=_microsoft_contacts,
    static_contacts=_microsoft_static_contacts,
    mail=_microsoft_mail,
    static_mail=_microsoft_static_mail,
    contacts_push=GRAPH_SUBSCRIPTION,
    push={"contacts": PushNeed(GRAPH_SUBSCRIPTION, "subscription", "me/contacts"),
          "mail": PushNeed(GRAPH_SUBSCRIPTION, "subscription", "me/messages")},
    subscription_kinds=(GRAPH_SUBSCRIPTION,),
    revokes=False,  # the Microsoft identity platform has no revocation endpoint
)

PROVIDERS: dict[str, Provider] = {p.name: p for p in (GOOGLE, MICROSOFT)}

#: Every subscription kind a mailbox may hold (platform hooks are not the mailbox's).
MAILBOX_SUBSCRIPTION_KINDS: tuple[str, ...] = tuple(
    dict.fromkeys(k.name for p in PROVIDERS.values() for k in p.subscription_kinds))


def names() -> tuple[str, ...]:
    return tuple(PROVIDERS)


def get(name: str) -> Provider:
    """The provider called `name`, or UnknownProvider (a Fatal) naming the ones there are."""
    try:
        return PROVIDERS[name]
    except (KeyError, TypeError):
        raise UnknownProvider(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})") from None
