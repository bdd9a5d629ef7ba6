"""Every deployment setting Concord reads, in one place (the only reader of the environment).

`load()` reads the environment each time it is called: entry points and component
builders call it when the process starts or the component is built, never at import
time, so a test's `monkeypatch.setenv` is seen. Each field's description is its
documentation: `python -m settings --markdown` prints the README's Configuration table
from this class, and `tests/test_settings.py` fails when the README differs.

What is checked here is the type (a number is a number); what a value must look like
beyond that (a vault key ring, a hex key, an exporter name) is checked where it is
used, with the messages the process always gave. A value of the wrong type is a
`SettingsError`: one line naming the variable, never a secret's value. An empty
variable counts as unset.

This package sits below every other one of ours and imports none of them
(`tests/test_layering.py`).
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load", "markdown_table", "env_names"]

PREFIX = "CONCORD_"


class SettingsError(ValueError):
    """A setting of the wrong type: one line naming the variable."""


class Settings(BaseSettings):
    """Concord's deployment settings, from the environment (variable names in the README table)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, populate_by_name=True,
                                      extra="ignore", frozen=True)

    # --- store and platform ----------------------------------------------------------------
    store_url: str = Field("sqlite:///.concord/store.db", description=(
        "The Concord store (SQLAlchemy URL): SQLite embedded, or PostgreSQL as "
        "`postgresql+psycopg://user:pass@host/db`. Worker, API and CLI (`--store-url` overrides it)."))
    crm_url: str = Field("sqlite:///.concord/crm.db", description=(
        "The reference CRM's database (SQLAlchemy URL), read by the worker (`--crm-url` overrides it)."))

    # --- Temporal -------------------------------------------------------------------------
    temporal: str = Field("127.0.0.1:7233", description=(
        "Temporal frontend `HOST:PORT`, for the worker, the API and the CLI (`--temporal` overrides it)."))
    temporal_namespace: str = Field("default", description="Temporal namespace the API signals workflows in.")
    temporal_port: int = Field(7233, description="`make demo` only: the port of the local Temporal dev server it runs.")

    # --- token vault and the HTTP app's secrets --------------------------------------------
    vault_keys: SecretStr | None = Field(None, description=(
        "Required by the worker and the API: the token vault's key ring, `kid:base64key,...` "
        "(32-byte AES keys; the first is active, the others still decrypt). Without it they exit "
        "with one line and do not start."))
    connect_key: SecretStr | None = Field(None, description=(
        "Required by the API: hex key that signs the connect links (`api.app.start_link`)."))
    platform_webhook_key: SecretStr | None = Field(None, description=(
        "Hex, at least 16 bytes: the master key the platforms' webhook signing keys derive from. "
        "Unset: platform webhooks are refused."))
    admin_token: SecretStr | None = Field(None, description=(
        "At least 16 characters: the bearer token that reads `GET /webhooks/stats` (404 when unset)."))
    pubsub_audience: str | None = Field(None, description=(
        "Gmail pushes: the `aud` of Pub/Sub's OIDC token. Set with `CONCORD_PUBSUB_SERVICE_ACCOUNT` "
        "or not at all; unset: Gmail pushes are refused."))
    pubsub_service_account: str | None = Field(None, description=(
        "Gmail pushes: the verified `email` of Pub/Sub's OIDC token (the push subscription's service account)."))
    pubsub_certs_url: str = Field("https://www.googleapis.com/oauth2/v1/certs", description=(
        "Where the keys that sign Pub/Sub's OIDC tokens are published."))
    pubsub_push_token: SecretStr | None = Field(None, description=(
        "No longer used (pushes are authenticated by their OIDC token); the API warns when it is set."))

    # --- OAuth apps and public endpoints ---------------------------------------------------
    public_url: str | None = Field(None, description=(
        "Public base URL of the API: OAuth redirect URIs hang off it and the worker gives it to Graph "
        "for subscription notifications. Unset: redirects use `http://127.0.0.1:8000/` and the worker "
        "makes no Graph subscriptions."))
    google_client_id: str = Field("", description="Google OAuth client id (empty: Google connections cannot be made).")
    google_client_secret: SecretStr = Field(SecretStr(""), description="Google OAuth client secret.")
    google_auth_uri: str = Field("https://accounts.google.com/o/oauth2/v2/auth",
                                 description="Google's authorization endpoint.")
    google_token_uri: str = Field("https://oauth2.googleapis.com/token", description="Google's token endpoint.")
    google_revoke_uri: str = Field("https://oauth2.googleapis.com/revoke", description="Google's revocation endpoint.")
    google_certs_uri: str = Field("https://www.googleapis.com/oauth2/v1/certs", description=(
        "Where Google publishes the keys its id_tokens are signed with."))
    ms_client_id: str = Field("", description=(
        "Microsoft (Entra ID) OAuth client id (empty: Microsoft connections cannot be made)."))
    ms_client_secret: SecretStr = Field(SecretStr(""), description="Microsoft OAuth client secret.")
    ms_authority: str = Field("https://login.microsoftonline.com/organizations", description=(
        "Microsoft authority (tenant) URL; a sovereign cloud's or a single tenant's instead."))
    oauth_ca_file: str | None = Field(None, description=(
        "A CA bundle to trust for the identity providers (emulators with a test certificate)."))
    gmail_topic: str | None = Field(None, description=(
        "Where Gmail watches publish (`projects/P/topics/T`); a connection's `gmail_topic` setting "
        "overrides it. Unset: Gmail mail is polled only."))

    # --- sending ---------------------------------------------------------------------------
    send_lease_s: float = Field(45.0, description=(
        "Seconds a worker holds an outbox item it is sending before another may take it over "
        "(after a crash it is looked up in the mailbox's Sent first)."))
    prometheus_port: int | None = Field(None, ge=1, le=65535, description=(
        "A port on which the worker serves its sync health metrics for Prometheus at `/metrics` "
        "(needs `pip install '.[prometheus]'`). Unset: metrics go through OpenTelemetry only."))

    # --- telemetry (standard OpenTelemetry variables) ----------------------------------------
    otel_traces_exporter: str = Field("console", validation_alias=AliasChoices(
        "OTEL_TRACES_EXPORTER", "CONCORD_OTEL_EXPORTER"), description=(
        "`console` (one JSON line per span, on stdout or to `CONCORD_OTEL_FILE`), `otlp` (needs "
        "`pip install '.[otlp]'`) or `none`; one exporter. `CONCORD_OTEL_EXPORTER` is read as a "
        "fallback alias when this is unset."))
    otel_file: str | None = Field(None, description="Console spans are appended to this file instead of stdout.")
    otel_service_name: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_SERVICE_NAME", "otel_service_name"), description=(
        "The traces' `service.name`. Unset: `concord-worker`, `concord-demo`, ... by process."))
    otel_exporter_otlp_endpoint: str | None = Field(None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT"), description=(
        "The OTLP collector; the exporter reads it (and the other standard `OTEL_EXPORTER_OTLP_*` "
        "variables, such as `_HEADERS`) itself. Unset: the exporter's default (localhost)."))
    otel_exporter_otlp_protocol: str = Field("http/protobuf", validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        description="`http/protobuf` or `grpc`; `OTEL_EXPORTER_OTLP_PROTOCOL` is read when this is unset.")


def _field_secret(name: str) -> bool:
    info = Settings.model_fields.get(name)
    return info is not None and "SecretStr" in str(info.annotation)


def env_names(name: str) -> list[str]:
    """The environment variables a field is read from, first one first."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str) and c.isupper()]
    return [PREFIX + name.upper()]


def _describe(error: dict) -> str:
    loc = error.get("loc") or ("?",)
    name = str(loc[0])
    var = env_names(name)[0] if name in Settings.model_fields else name
    msg = error.get("msg", "invalid value")
    if name in Settings.model_fields and not _field_secret(name) and "input" in error:
        return f"{var}: {msg} (got {error['input']!r})"
    return f"{var}: {msg}"


def load(**overrides: Any) -> Settings:
    """The settings as the environment has them now (`overrides` win, by field name).

    Raises SettingsError, one line naming each bad variable, never a secret's value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors())) from None


# ------------------------------------------------------------------------ documentation

def _type_name(name: str) -> str:
    if _field_secret(name):
        return "secret"
    ann = Settings.model_fields[name].annotation
    for t, label in ((float, "number"), (int, "integer")):
        if ann is t:
            return label
    return "text"


def _default(name: str) -> str:
    value = Settings.model_fields[name].default
    if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()) or value == "":
        return "unset"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def markdown_table() -> str:
    """The README's Configuration table, generated from `Settings`."""
    rows = ["| variable | type | default | what it is |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        names = env_names(name)
        var = f"`{names[0]}`" + "".join(f" (or `{n}`)" for n in names[1:])
        desc = " ".join((info.description or "").split()).replace("|", "\\|")
        rows.append(f"| {var} | {_type_name(name)} | {_default(name)} | {desc} |")
    return "\n".join(rows) + "\n"
