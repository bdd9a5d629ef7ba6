"""Imports run one way, and one registry names the providers (issue 7, layering).

Order, lowest first: models <- sync <- store <- connectors (and platforms) <-
activities <- workers; telemetry sits on models only; workflows use models,
workflows, temporalio and the standard library only. `settings` (the deployment
settings, the one reader of the environment) imports nothing of ours, and every
package but models, sync and workflows may read it. Emulators are demo, test and
bench tooling: no production module imports them.

Provider names ("google", "microsoft", and subscription kinds such as
"google_gmail") appear as literals only in `connectors/registry.py`, the
provider-specific modules and data (the schema's CHECK constraints, migrations,
demo scenario data); everything else asks the registry.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

OURS = ("settings", "models", "sync", "telemetry", "store", "connectors", "platforms", "activities", "workers", "workflows",
        "api", "emulators", "bench", "tests")

#: Of our packages, what each may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "settings": set(),
    "models": set(),
    "sync": {"models"},
    "telemetry": {"settings", "models"},
    "store": {"settings", "models", "sync"},
    "connectors": {"settings", "models", "sync", "telemetry", "store"},
    "platforms": {"settings", "models", "sync", "telemetry", "store", "connectors"},
    "activities": {"settings", "models", "sync", "telemetry", "store", "connectors", "platforms"},
    "workflows": {"models"},
}

#: Demo tooling inside `workers/`: it may use the emulators (and nothing in production imports it).
DEMO_MODULES = {"workers.demo", "workers.scenario", "workers.mail_scenario", "workers.mail_demo",
                "workers.calendar_scenario", "workers.calendar_demo", "workers.stages"}
NOT_PRODUCTION = ("emulators", "bench", "tests")

PROVIDER_LITERAL = re.compile(r"^(google|microsoft)(_[a-z]+)?$")
#: Where provider names may be spelled out.
LITERALS_ALLOWED = (
    re.compile(r"^connectors/registry\.py$"),
    re.compile(r"^connectors/(google|graph|oauth|gmail)_[a-z_]+\.py$"),
    re.compile(r"^store/schema\.py$"),  # CHECK constraints: data
    re.compile(r"^store/migrations/"),  # frozen history: data
    re.compile(r"^workers/(demo|scenario|mail_scenario|mail_demo|calendar_scenario|calendar_demo|stages)\.py$"),  # demo data
    re.compile(r"^(emulators|bench|tests)/"),
)


def _modules() -> list[tuple[str, Path]]:
    out = []
    for pkg in OURS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append((".".join(parts), path))
    return out


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, at any depth (lazy ones too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            if "." not in mod:  # `from workers import telemetry` imports workers.telemetry
                found.extend((node.lineno, f"{mod}.{a.name}") for a in node.names if a.name != "*")
    return found


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _violations(rule) -> list[str]:
    bad = []
    for name, path in _modules():
        for line, mod in _imports(name, path):
            why = rule(name, mod)
            if why:
                bad.append(f"{_rel(path)}:{line} imports {mod} ({why})")
    return sorted(set(bad))


def _is_production(name: str) -> bool:
    return name.split(".")[0] not in NOT_PRODUCTION and name not in DEMO_MODULES


def test_packages_import_downward_only():
    def rule(name: str, mod: str) -> str | None:
        mine, theirs = name.split(".")[0], mod.split(".")[0]
        if mine not in ALLOWED or theirs not in OURS or theirs == mine:
            return None
        if theirs not in ALLOWED[mine]:
            return f"{mine} may import only {sorted(ALLOWED[mine]) or 'nothing of ours'}"
        return None

    assert _violations(rule) == []


def test_activities_and_lower_never_import_workers_or_api():
    lower = {"settings", "models", "sync", "telemetry", "store", "connectors", "platforms", "activities"}

    def rule(name: str, mod: str) -> str | None:
        if name.split(".")[0] in lower and mod.split(".")[0] in ("workers", "api", "workflows"):
            return "workers and api build on activities, not the other way"
        return None

    assert _violations(rule) == []


def test_workflows_import_only_models_workflows_temporalio_and_stdlib():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}

    def rule(name: str, mod: str) -> str | None:
        if name.split(".")[0] != "workflows":
            return None
        top = mod.split(".")[0]
        if top in ("models", "workflows", "temporalio") or top in stdlib:
            return None
        return "workflows are deterministic: models, workflows, temporalio and stdlib only"

    assert _violations(rule) == []


def test_no_production_module_imports_emulators_or_the_demo():
    def rule(name: str, mod: str) -> str | None:
        if not _is_production(name):
            return None
        if mod.split(".")[0] == "emulators":
            return "emulators are demo/test/bench tooling"
        if any(mod == d or mod.startswith(d + ".") for d in DEMO_MODULES):
            return "the demo is tooling"
        return None

    assert _violations(rule) == []


def test_production_entry_points_load_no_emulator():
    """The same, at run time: what a worker, the CLI and the HTTP app load."""
    code = (
        "import sys, pkgutil, importlib\n"
        f"DEMO = {sorted(DEMO_MODULES)!r}\n"
        "import workers.worker, workers.cli, workers.client, workers.devstack, api.app\n"
        "for pkg in ('settings', 'activities', 'connectors', 'store', 'sync', 'models', 'workflows', 'platforms', 'api'):\n"
        "    p = importlib.import_module(pkg)\n"
        "    for m in pkgutil.walk_packages(p.__path__, pkg + '.'):\n"
        "        if '.migrations' not in m.name:\n"
        "            importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'emulators' or m in DEMO))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_provider_names_only_in_the_registry_and_provider_modules():
    bad = []
    for name, path in _modules():
        rel = _rel(path)
        if any(p.search(rel) for p in LITERALS_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and PROVIDER_LITERAL.match(node.value):
                bad.append(f"{rel}:{node.lineno} {node.value!r}")
    assert bad == [], "ask connectors.registry instead of naming a provider:\n" + "\n".join(bad)


def test_registry_names_match_the_store_constraints():
    from connectors import registry
    from store import schema

    assert set(registry.names()) == set(schema.PROVIDERS)
    assert set(registry.MAILBOX_SUBSCRIPTION_KINDS) <= set(schema.SUBSCRIPTION_PROVIDERS)
    for provider in registry.PROVIDERS.values():
        assert registry.get(provider.name) is provider
        assert provider.contacts_push is None or provider.contacts_push in provider.subscription_kinds
        # the push table names only kinds its mailboxes may hold (so disconnect stops them)
        assert all(need.kind in provider.subscription_kinds for need in provider.push.values())
        assert all(need.mode in ("subscription", "watch") for need in provider.push.values())
        contacts = provider.push.get("contacts")
        assert (contacts.kind if contacts else None) is provider.contacts_push


def test_unknown_provider_is_one_clear_error():
    from connectors import registry
    from connectors.credentials import ProviderConfig
    from models.errors import Fatal

    with pytest.raises(registry.UnknownProvider, match=r"unknown provider 'yahoo' \(known: google, microsoft\)"):
        registry.get("yahoo")
    with pytest.raises(Fatal, match="unknown provider 'yahoo'"):
        ProviderConfig(google_client_id="x", ms_client_id="y").oauth("yahoo")
    with pytest.raises(registry.UnknownProvider, match="unknown mailbox subscription kind 'platform'"):
        registry.subscription_kind("platform")
