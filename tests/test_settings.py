"""The deployment settings: one object, read from the environment when asked, documented
by its own fields (the README's table is generated from it), secrets never shown."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from settings import Settings, SettingsError, env_names, load, markdown_table
from settings.__main__ import BEGIN, END, readme_with_table

ROOT = Path(__file__).resolve().parents[1]
#: The packages whose code runs in a deployment (and the demo): none reads the environment itself.
PACKAGES = ("activities", "api", "connectors", "emulators", "models", "platforms", "store", "sync",
            "telemetry", "workers", "workflows")


@pytest.fixture
def clean_env(monkeypatch):
    """No Concord or OpenTelemetry variable from the machine running the tests."""
    import os

    for name in list(os.environ):
        if name.startswith(("CONCORD_", "OTEL_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults(clean_env):
    s = load()
    assert s.store_url == "sqlite:///.concord/store.db"
    assert s.crm_url == "sqlite:///.concord/crm.db"
    assert (s.temporal, s.temporal_namespace, s.temporal_port) == ("127.0.0.1:7233", "default", 7233)
    assert s.vault_keys is None and s.connect_key is None and s.admin_token is None
    assert s.public_url is None and s.gmail_topic is None
    assert s.send_lease_s == 45.0
    assert (s.otel_traces_exporter, s.otel_file, s.otel_exporter_otlp_protocol) == ("console", None, "http/protobuf")


def test_defaults_match_the_constants_the_code_keeps():
    from activities.send import LEASE_S
    from connectors.credentials import DEFAULT_MS_AUTHORITY, ProviderConfig
    from connectors.id_tokens import GOOGLE_CERTS_URL
    from connectors.oauth_google import GOOGLE_AUTH_URI, GOOGLE_REVOKE_URI, GOOGLE_TOKEN_URI
    from store.db import DEFAULT_URL

    d = {name: f.default for name, f in Settings.model_fields.items()}
    assert d["send_lease_s"] == LEASE_S
    assert d["store_url"] == DEFAULT_URL
    assert (d["google_auth_uri"], d["google_token_uri"], d["google_revoke_uri"]) == (
        GOOGLE_AUTH_URI, GOOGLE_TOKEN_URI, GOOGLE_REVOKE_URI)
    assert d["google_certs_uri"] == d["pubsub_certs_url"] == GOOGLE_CERTS_URL
    assert d["ms_authority"] == DEFAULT_MS_AUTHORITY
    assert ProviderConfig.from_env(Settings()).public_url == ProviderConfig().public_url


def test_environment_overrides_read_when_loaded_not_at_import(clean_env):
    clean_env.setenv("CONCORD_STORE_URL", "postgresql+psycopg://u@db/concord")
    clean_env.setenv("CONCORD_SEND_LEASE_S", "3")
    clean_env.setenv("CONCORD_TEMPORAL_PORT", "7300")
    clean_env.setenv("CONCORD_GMAIL_TOPIC", "projects/p/topics/t")
    s = load()
    assert s.store_url == "postgresql+psycopg://u@db/concord"
    assert s.send_lease_s == 3.0 and s.temporal_port == 7300 and s.gmail_topic == "projects/p/topics/t"
    from store.db import default_url

    assert default_url() == "postgresql+psycopg://u@db/concord"
    clean_env.setenv("CONCORD_STORE_URL", "")  # empty counts as unset
    assert load().store_url == "sqlite:///.concord/store.db"


def test_standard_otel_variables_with_the_old_name_as_fallback(clean_env):
    clean_env.setenv("CONCORD_OTEL_EXPORTER", "none")
    assert load().otel_traces_exporter == "none"
    clean_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert load().otel_traces_exporter == "otlp"  # the standard name wins
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert load().otel_exporter_otlp_protocol == "grpc"
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert load().otel_exporter_otlp_protocol == "http/protobuf"  # the traces-specific one wins
    clean_env.setenv("OTEL_SERVICE_NAME", "concord-eu")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    s = load()
    assert (s.otel_service_name, s.otel_exporter_otlp_endpoint) == ("concord-eu", "http://collector:4318")
    assert env_names("otel_traces_exporter") == ["OTEL_TRACES_EXPORTER", "CONCORD_OTEL_EXPORTER"]


@pytest.mark.parametrize("var, value, words", [
    ("CONCORD_SEND_LEASE_S", "soon", "valid number"),
    ("CONCORD_TEMPORAL_PORT", "7233x", "valid integer"),
])
def test_a_bad_value_is_one_line_naming_the_variable(clean_env, var, value, words):
    clean_env.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load()
    message = str(err.value)
    assert message.startswith(f"{var}: ") and words in message and repr(value) in message
    assert "\n" not in message


def test_a_bad_value_stops_the_worker_with_that_line(clean_env):
    clean_env.setenv("CONCORD_SEND_LEASE_S", "soon")
    out = subprocess.run([sys.executable, "-m", "workers.cli", "worker"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("concord: CONCORD_SEND_LEASE_S: "), out.stderr
    out = subprocess.run([sys.executable, "-m", "workers.worker"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and out.stderr.strip().startswith("CONCORD_SEND_LEASE_S: ")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_secrets_are_never_shown(clean_env):
    marks = {var: f"S3CRET-{var}" for var in (
        "CONCORD_VAULT_KEYS", "CONCORD_CONNECT_KEY", "CONCORD_PLATFORM_WEBHOOK_KEY", "CONCORD_ADMIN_TOKEN",
        "CONCORD_GOOGLE_CLIENT_SECRET", "CONCORD_MS_CLIENT_SECRET", "CONCORD_PUBSUB_PUSH_TOKEN")}
    for var, value in marks.items():
        clean_env.setenv(var, value)
    s = load()
    shown = repr(s) + str(s) + repr(s.model_dump()) + s.model_dump_json()
    assert not any(v in shown for v in marks.values())
    assert s.admin_token.get_secret_value() == marks["CONCORD_ADMIN_TOKEN"]  # still usable
    # exactly those are SecretStr fields
    secret_fields = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    assert {env_names(n)[0] for n in secret_fields} == set(marks)
    # nor in the error a wrong type gives
    with pytest.raises(SettingsError) as err:
        load(vault_keys=12345678)
    assert "12345678" not in str(err.value) and str(err.value).startswith("CONCORD_VAULT_KEYS: ")


def test_a_missing_vault_key_still_stops_with_its_message(clean_env):
    from store.vault import KeyRing, VaultConfigError

    with pytest.raises(VaultConfigError, match="CONCORD_VAULT_KEYS is not set"):
        KeyRing.from_env()


def test_every_field_is_documented_and_named():
    for name, info in Settings.model_fields.items():
        assert info.description and len(info.description) > 20, name
        assert env_names(name) and all(v.isupper() for v in env_names(name)), name
    names = [v for n in Settings.model_fields for v in env_names(n)]
    assert len(names) == len(set(names))


def test_the_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme
    assert readme_with_table(readme) == readme, (
        "README.md's Configuration table differs from the settings: run "
        "`.venv/bin/python -m settings --write-readme README.md`")
    out = subprocess.run([sys.executable, "-m", "settings", "--markdown"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == markdown_table()
    for name in Settings.model_fields:
        assert f"`{env_names(name)[0]}`" in out.stdout


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def _environ_reads(path: Path) -> list[str]:
    """Where a module reads the environment: os.getenv, os.environ (or `environ`) other than
    assigning an item, setdefault (handing a value to what is built next) or copying it whole
    for a child process (`{**os.environ}`, `os.environ.copy()`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            allowed.add(id(node.value))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("setdefault", "copy")):
            allowed.add(id(node.func.value))
        elif isinstance(node, ast.Dict):
            allowed.update(id(v) for k, v in zip(node.keys, node.values) if k is None)
    bad = []
    for node in ast.walk(tree):
        is_environ = (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb")) or (
            isinstance(node, ast.Name) and node.id in ("environ", "getenv"))
        if is_environ and id(node) not in allowed:
            bad.append(f"{_name(path)}:{node.lineno}")
        if isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ("environ", "getenv") for a in node.names):
            bad.append(f"{_name(path)}:{node.lineno} (from os import environ/getenv)")
    return bad


def test_no_module_outside_settings_reads_the_environment():
    bad = [hit for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py")) for hit in _environ_reads(path)]
    assert bad == [], "read `settings.load()` instead of the environment:\n" + "\n".join(bad)


def test_the_check_finds_a_read(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('import os\nA = os.environ.get("CONCORD_X")\nB = os.getenv("CONCORD_Y")\nenv = os.environ\n'
                     'os.environ["CONCORD_Z"] = "1"\nos.environ.setdefault("CONCORD_W", "1")\n'
                     'child = {**os.environ, "X": "1"}\n')
    assert sorted(h.split(":")[1] for h in _environ_reads(probe)) == ["2", "3", "4"]
