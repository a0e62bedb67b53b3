"""The compose deployment: docker-compose.yaml, the Dockerfile it builds, .env.example.

No Docker engine runs here, so the compose file is checked as `docker compose up` would read it:
`docker-compose config` (Debian's docker-compose 1.29) interpolates it with an env file of test
secrets and prints it normalised. Missing docker-compose skips these tests, and fails them
with CONNECTOR_SEGMENTS_REQUIRE_COMPOSE=1 (CI). The init service's admin script runs against a
metadata DB migrated under FAB, and its password logs in to a real `airflow api-server`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT, airflow_api_server

COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CREATE_ADMIN = ROOT / "docker" / "create_admin.py"
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

NETMERA_KEY = "netmera-test-key-2w"
# Every secret the deployment requires, with the test's value (none is a real default).
SECRETS = {
    "POSTGRES_PASSWORD": "pgtest4pw9x",
    "AIRFLOW_FERNET_KEY": "fernet-test-key-7q",
    "AIRFLOW_JWT_SECRET": "jwt-test-secret-3k",
    "AIRFLOW_API_SECRET_KEY": "api-test-secret-5m",
    "AIRFLOW_ADMIN_PASSWORD": "admin-test-password-8z",
    "AIRFLOW_CONN_NETMERA_DEFAULT": json.dumps(
        {"conn_type": "http", "host": "https://restapi.netmera.com", "password": NETMERA_KEY}
    ),
}
# Settings the deployment requires that are no secret.
SETTINGS = {"CONNECTOR_SEGMENTS_STAGING_DIR": "s3://aws_staging@cs-staging-test/runs"}
REQUIRED = {**SECRETS, **SETTINGS}
SECRET_STRINGS = [
    *(v for k, v in SECRETS.items() if k != "AIRFLOW_CONN_NETMERA_DEFAULT"),
    NETMERA_KEY,
]
# Defaults that Airflow's own compose file and many examples ship.
KNOWN_DEFAULTS = ["airflow:airflow", "airflow_jwt_secret", "change-me", "changeme", "minioadmin"]

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "flower",
}
SERVICES = AIRFLOW_SERVICES | {"postgres", "redis"}


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        reason = "docker-compose is not installed (apt-get install docker-compose)"
        if os.environ.get("CONNECTOR_SEGMENTS_REQUIRE_COMPOSE") == "1":
            pytest.fail(f"{reason} (CONNECTOR_SEGMENTS_REQUIRE_COMPOSE=1: CI must run these)")
        pytest.skip(reason)
    return path


def compose_config(folder: Path, values: dict[str, str]) -> subprocess.CompletedProcess:
    """`docker-compose config` with `values` as its only variables: the env file replaces any
    .env beside the compose file, and the shell's own variables are left out."""
    env_file = folder / "test.env"
    env_file.write_text("".join(f"{name}='{value}'\n" for name, value in values.items()))
    return subprocess.run(
        [docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(folder)},
        timeout=60,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    done = compose_config(tmp_path_factory.mktemp("compose"), REQUIRED)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def env_of(config: dict, service: str) -> dict:
    return config["services"][service].get("environment") or {}


def required_variables() -> set[str]:
    """The variables the compose file requires (`${NAME:?message}`)."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", COMPOSE.read_text()))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments left out."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.split(None, 1) for line in joined.splitlines() if line.strip())
    ]


# -- the compose file ---------------------------------------------------------------------------


def test_every_service_of_the_deployment_is_defined(config):
    assert set(config["services"]) >= SERVICES
    assert config["services"]["flower"]["profiles"] == ["flower"]  # optional: only on request


def test_airflow_runs_the_image_built_here_with_the_celery_executor(config):
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in COMPOSE.read_text()
    images = set()
    for name in AIRFLOW_SERVICES:
        service, env = config["services"][name], env_of(config, name)
        assert service["build"]["context"] == str(ROOT), name
        images.add(service["image"])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == FAB, name  # real users and roles
        assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" not in env, name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        # psycopg2 named, whatever SQLAlchemy's default (2.1's is psycopg 3, also in the image)
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        # the workers' Execution API is the api-server service's
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/"
        )
    assert len(images) == 1  # one image, built once, for every Airflow service
    assert config["services"]["airflow-apiserver"]["ports"] == [{"published": 8080, "target": 8080}]


def test_each_service_runs_its_airflow_component(config):
    services = config["services"]
    init = " ".join(services["airflow-init"]["command"])
    steps = [
        "airflow db migrate",
        "python -m include.orchestration.pools",
        "python -m include.cli validate",
        "python -m include.orchestration.access sync",
        "python /opt/airflow/docker/create_admin.py",
    ]
    assert " && ".join(steps) in init, init  # in this order; a failing step stops the rest
    assert services["airflow-init"]["restart"] == "no"
    assert services["airflow-scheduler"]["command"] == "scheduler"
    assert services["airflow-dag-processor"]["command"] == "dag-processor"
    assert services["airflow-triggerer"]["command"] == "triggerer"
    assert services["airflow-worker"]["command"] == "celery worker"
    assert services["flower"]["command"] == "celery flower"
    assert services["airflow-apiserver"]["command"] == "api-server"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == {"condition": "service_healthy"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name


def test_workers_scale_and_share_nothing_but_the_staging_bucket(config):
    assert all("container_name" not in s for s in config["services"].values())  # --scale works
    staging = SETTINGS["CONNECTOR_SEGMENTS_STAGING_DIR"]
    for name in AIRFLOW_SERVICES:  # every component stages in the same bucket, on no volume
        env, service = env_of(config, name), config["services"][name]
        assert env["CONNECTOR_SEGMENTS_STAGING_DIR"] == staging, name
        assert "AIRFLOW_CONN_AWS_STAGING" in env, name  # passed on when set
        assert all(v.split(":")[0] == "logs" for v in service.get("volumes", [])), name
    assert "staging" not in config["volumes"]
    # encryption is a setting, off unless given
    assert env_of(config, "airflow-worker")["CONNECTOR_SEGMENTS_STAGING_SSE"] == ""
    assert not any("staging" in args for op, args in dockerfile_instructions() if op == "RUN")


def test_minio_is_an_optional_one_host_trial_store(config, tmp_path):
    services = config["services"]
    for name in ("minio", "minio-init"):
        assert services[name]["profiles"] == ["minio"], name  # only on request
    assert "ports" not in services["minio"]  # reached by the containers only
    init = " ".join(services["minio-init"]["entrypoint"])
    assert "mc mb --ignore-existing trial/connector-segments-staging" in init
    rule = '{"ID": "expire-staged", "Status": "Enabled", "Expiration": {"Days": 1}}'
    assert f"{rule}]}}' | mc ilm import trial/connector-segments-staging" in init  # idempotent
    # MinIO would start with its well-known password: without one it refuses to
    command = " ".join(services["minio"]["command"])
    assert 'test -n "$MINIO_ROOT_PASSWORD" || {' in command.replace("$$", "$")
    given = compose_config(tmp_path, {**REQUIRED, "MINIO_ROOT_PASSWORD": "minio-test-pw-6t"})
    minio = yaml.safe_load(given.stdout)["services"]["minio"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == "minio-test-pw-6t"


def test_secrets_are_read_from_the_env_file(config):
    for name in AIRFLOW_SERVICES:
        env = env_of(config, name)
        assert env["AIRFLOW__CORE__FERNET_KEY"] == SECRETS["AIRFLOW_FERNET_KEY"], name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"], name
        assert env["AIRFLOW__API__SECRET_KEY"] == SECRETS["AIRFLOW_API_SECRET_KEY"], name
        assert env["AIRFLOW_CONN_NETMERA_DEFAULT"] == SECRETS["AIRFLOW_CONN_NETMERA_DEFAULT"]
        pg = SECRETS["POSTGRES_PASSWORD"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
            f"postgresql+psycopg2://airflow:{pg}@postgres/airflow"
        )
        assert f"airflow:{pg}@postgres/airflow" in env["AIRFLOW__CELERY__RESULT_BACKEND"]
        netmera_db = json.loads(env["AIRFLOW_CONN_NETMERA_DB"])
        assert (netmera_db["host"], netmera_db["schema"], netmera_db["password"]) == (
            "postgres",
            "netmera",
            pg,
        )
        # the admin's password reaches the init service only, which makes the user
        assert ("AIRFLOW_ADMIN_PASSWORD" in env) == (name == "airflow-init"), name
    assert (
        env_of(config, "airflow-init")["AIRFLOW_ADMIN_PASSWORD"]
        == (SECRETS["AIRFLOW_ADMIN_PASSWORD"])
    )
    assert env_of(config, "postgres")["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]


def test_the_compose_file_holds_no_secret():
    text = COMPOSE.read_text()
    for literal in SECRET_STRINGS + KNOWN_DEFAULTS:
        assert literal not in text, literal
    # a password inside a URL or a JSON Connection is always a variable
    for password in re.findall(r"://[^/\s:@]+:([^@\s]+)@", text):
        assert password.startswith("${POSTGRES_PASSWORD:?"), password
    for password in re.findall(r'"password":\s*"([^"]*)"', text):
        assert password.startswith("${POSTGRES_PASSWORD:?"), password
    # each secret is required: never a default (`:-`) nor silently empty (`${NAME}`)
    assert required_variables() == set(REQUIRED)
    for name in REQUIRED:
        assert not re.search(rf"\$\{{{name}(\}}|:?-)", text), name


@pytest.mark.parametrize("how", ["missing", "empty"])
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_a_missing_setting_stops_compose_naming_it(name, how, tmp_path):
    values = {k: v for k, v in REQUIRED.items() if k != name}
    if how == "empty":
        values[name] = ""
    done = compose_config(tmp_path, values)
    assert done.returncode != 0
    assert f"set {name} " in done.stderr, done.stderr
    assert not any(secret in done.stderr for secret in SECRET_STRINGS)


def test_env_example_lists_every_required_secret_and_holds_none():
    example = ROOT / ".env.example"
    settings = dict(
        line.split("=", 1)
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(settings) == required_variables()
    assert set(settings.values()) == {""}  # to be filled in: no shipped secret to forget
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored  # never copied into the image's build context


# -- the image ----------------------------------------------------------------------------------


def test_the_image_extends_airflows_and_pins_airflow_beside_the_requirements():
    instructions = dockerfile_instructions()
    assert [args for op, args in instructions if op == "FROM"] == [
        "apache/airflow:3.3.2-python3.11"
    ]
    installs = [args for op, args in instructions if op == "RUN" and "pip install" in args]
    assert len(installs) == 1
    words = installs[0].replace('"', "").split()
    assert "apache-airflow==3.3.2" in words
    assert words[words.index("-r") + 1].endswith("/requirements.txt")
    assert "--no-cache-dir" in words
    # the same Airflow as the venv and CI, and the CeleryExecutor's provider with it
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    assert "apache-airflow==3.3.2" in pins
    assert any(pin.startswith("apache-airflow-providers-celery==") for pin in pins)
    copies = {args for op, args in instructions if op == "COPY"}
    for folder in ("dags", "plugins", "include"):
        assert f"{folder}/ /opt/airflow/{folder}/" in copies, folder
    assert ("ENV", "PYTHONPATH=/opt/airflow") in instructions


# -- the admin -----------------------------------------------------------------------------------


def create_admin(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CREATE_ADMIN)],
        capture_output=True,
        text=True,
        env={**env, **extra},
        timeout=120,
    )


@pytest.fixture
def fab_home(tmp_path: Path) -> dict[str, str]:
    """A metadata DB migrated under FAB, as compose's init service has it."""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home"), "AIRFLOW__CORE__AUTH_MANAGER": FAB}
    migrated = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "Traceback" not in migrated.stdout + migrated.stderr  # FAB's tables too
    return env


def test_the_admin_logs_in_with_the_password_from_the_environment(fab_home, tmp_path):
    """What the init service runs, then `airflow api-server` under FAB: the login takes the
    password from AIRFLOW_ADMIN_PASSWORD; a second init with another password changes it."""
    first = create_admin(fab_home, AIRFLOW_ADMIN_PASSWORD="an-old-password-1x")
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    password = SECRETS["AIRFLOW_ADMIN_PASSWORD"]
    again = create_admin(fab_home, AIRFLOW_ADMIN_PASSWORD=password)
    assert again.returncode == 0, again.stderr
    for done in (first, again):
        assert password not in done.stdout + done.stderr
        assert "an-old-password-1x" not in done.stdout + done.stderr

    with airflow_api_server(tmp_path / "api-server.log", **fab_home) as base:

        def login(user: str, secret: str) -> int:
            body = {"username": user, "password": secret}
            return requests.post(f"{base}/auth/token", json=body, timeout=30).status_code

        assert login("admin", password) == 201
        assert login("admin", "an-old-password-1x") == 401
        token = requests.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30
        ).json()["access_token"]
        me = requests.get(
            f"{base}/api/v2/connections", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert me.status_code == 200  # the Admin role


def test_without_the_password_no_admin_is_made(fab_home):
    done = create_admin(fab_home, AIRFLOW_ADMIN_PASSWORD="")
    assert done.returncode == 1
    assert "AIRFLOW_ADMIN_PASSWORD is not set" in done.stderr
