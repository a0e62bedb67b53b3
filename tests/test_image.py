"""The production image's packages, reproduced without Docker (issue 20).

Production runs apache/airflow:3.3.2-python3.11 extended by the Dockerfile's one `pip install`
of requirements.txt. No Docker engine runs here, so the image's package set is rebuilt from
PyPI: `apache-airflow[<the image's 34 default extras>]==3.3.2` resolved by uv for Python 3.11
from releases published before 3.3.2, which must equal docker/image-packages.txt (regenerate it
with `.venv/bin/python -m tests.test_image --write`, then align requirements.txt's pins). That
set is installed with `--no-deps` into a scratch venv in .local/image-test/, and the
Dockerfile's own pip line runs on top of it: it must add packages and move none, leave
`pip check` clean, and leave the providers, FAB's auth manager and `airflow db migrate`, the
DAGs and the plugin working.

Skips when PyPI is unreachable or the headers mysqlclient and python-ldap build against are
missing (installed with apt-get when running as root); fails instead with
CONNECTOR_SEGMENTS_REQUIRE_IMAGE=1 (CI). Measured on 2 cores shared with other test runs:
3.7 min cold (no .local/image-test: every wheel downloaded, mysqlclient and python-ldap built),
2.0-2.7 min warm (uv's cache there; the venv is rebuilt each time and the Dockerfile's line
downloads its additions again, as its --no-cache-dir says). The resolution takes ~23 s of it.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from uv import find_uv_bin

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "docker" / "image-packages.txt"
REQUIREMENTS = ROOT / "requirements.txt"
CACHE = ROOT / ".local" / "image-test"
VENV = CACHE / "venv"

PYPI = "https://pypi.org/simple"
# Airflow's Dockerfile, AIRFLOW_EXTRAS: what the official image installs Airflow with.
IMAGE_EXTRAS = (
    "aiobotocore,amazon,async,celery,cncf-kubernetes,common-io,common-messaging,docker,"
    "elasticsearch,fab,ftp,git,google,google-auth,graphviz,grpc,hashicorp,http,ldap,"
    "microsoft-azure,mysql,odbc,openlineage,opensearch,pandas,postgres,redis,sendgrid,sftp,"
    "slack,snowflake,ssh,statsd,uv"
)
IMAGE_REQUIREMENT = f"apache-airflow[{IMAGE_EXTRAS}]==3.3.2"
# apache-airflow 3.3.2 reached PyPI at 2026-09-17T08:38Z: the image was built from what existed.
IMAGE_CUTOFF = "2026-09-17T09:00:00Z"
# pip is no dependency of Airflow, so the resolved set lacks it (the image installs its own,
# AIRFLOW_PIP_VERSION); this is the newest pip before the cut-off.
IMAGE_PIP = "pip==26.2.1"
# Debian packages whose headers mysqlclient and python-ldap (the mysql and ldap extras) build with.
BUILD_PACKAGES = ("default-libmysqlclient-dev", "libldap2-dev", "libsasl2-dev", "pkg-config")
SEGMENT_DAGS = {
    "connector_segment_cart_abandoners",
    "connector_segment_churn_risk",
    "connector_segment_vip_customers",
}
# What the deployment loads beyond a provider's package: the auth manager and executor that
# docker-compose.yaml names, and the alert notifiers, which parsing a DAG never imports.
DEPLOYMENT_IMPORTS = (
    "airflow.providers.fab.auth_manager.fab_auth_manager:FabAuthManager",
    "airflow.providers.fab.auth_manager.cli_commands.utils:get_application_builder",
    "airflow.providers.celery.executors.celery_executor:CeleryExecutor",
    "airflow.providers.slack.notifications.slack_webhook:SlackWebhookNotifier",
    "airflow.providers.smtp.notifications.smtp:SmtpNotifier",
    "airflow.providers.amazon.aws.fs.s3:get_fs",
)


def resolve_image_set() -> list[str]:
    """The image's package set as `name==version` lines, resolved fresh from PyPI."""
    done = subprocess.run(
        [
            find_uv_bin(),
            *("pip", "compile", "-", "--python-version", "3.11"),
            *("--exclude-newer", IMAGE_CUTOFF, "--index-url", PYPI),
            *("--no-header", "--no-annotate", "--quiet"),
        ],
        input=IMAGE_REQUIREMENT,
        capture_output=True,
        text=True,
        env=uv_env(),
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"uv pip compile failed:\n{done.stderr}")
    return done.stdout.splitlines()


def committed_image_set() -> list[str]:
    return [line for line in PACKAGES.read_text().splitlines() if not line.startswith("#")]


def write_image_packages() -> None:
    """Re-resolve docker/image-packages.txt, keeping its `#` header."""
    header = [line for line in PACKAGES.read_text().splitlines() if line.startswith("#")]
    PACKAGES.write_text("\n".join([*header, *resolve_image_set()]) + "\n")


def uv_env() -> dict[str, str]:
    return {**os.environ, "UV_CACHE_DIR": str(CACHE / "uv-cache")}


def venv_env(**extra: str) -> dict[str, str]:
    """The environment of a command in the scratch venv: none of the test session's Airflow or
    project settings (conftest's AIRFLOW_HOME, PYTHONPATH), the venv's bin first on PATH."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "CONNECTOR_SEGMENTS_"))
        and name not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return {**env, **extra}


def run(args: list[str | Path], *, env: dict[str, str], timeout: int = 600):
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def must(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if done.returncode != 0:
        pytest.fail(f"{shlex.join(done.args)} exited {done.returncode}:\n{output(done)[-4000:]}")
    return done


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CONNECTOR_SEGMENTS_REQUIRE_IMAGE") == "1":
        pytest.fail(f"{reason} (CONNECTOR_SEGMENTS_REQUIRE_IMAGE=1: CI must run these)")
    pytest.skip(reason)


def dockerfile_pip_install() -> list[str]:
    """The Dockerfile's `RUN pip install ...`, split as its shell would, with the requirements
    file it copies to /opt/airflow read from the repository instead."""
    runs = re.findall(r"^RUN (pip install .*)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert len(runs) == 1, runs
    words = shlex.split(runs[0])
    assert "/opt/airflow/requirements.txt" in words, words
    return [str(REQUIREMENTS) if w == "/opt/airflow/requirements.txt" else w for w in words]


def pins(lines: list[str]) -> dict[str, str]:
    """{normalised name: version} of `name==version` lines (comments and blanks left out)."""
    found = {}
    for line in lines:
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, version = requirement.split("==")
            found[normalise(name.split("[")[0])] = version.strip()
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def venv_python(code: str, **env: str):
    """Run `code` with the scratch venv's Python; it prints one JSON line, returned parsed."""
    done = must(run([VENV / "bin" / "python", "-c", code], env=venv_env(**env)))
    return json.loads(done.stdout.strip().splitlines()[-1])


def installed() -> dict[str, str]:
    """{normalised name: version} of every distribution in the scratch venv."""
    found = venv_python(
        "import importlib.metadata as md, json; "
        "print(json.dumps([[d.metadata['Name'], d.version] for d in md.distributions()]))"
    )
    return {normalise(name): version for name, version in found}


@pytest.fixture(scope="module")
def pypi() -> None:
    try:
        requests.head(f"{PYPI}/pip/", timeout=15).raise_for_status()
    except requests.RequestException as exc:
        skip_or_fail(f"PyPI is not reachable ({type(exc).__name__}): the image set needs it")


def build_headers_missing() -> str | None:
    """None when mysqlclient and python-ldap can be built; else why not, after trying apt-get
    (as root) once."""

    def found() -> bool:
        try:
            check = ["pkg-config", "--exists", "mysqlclient", "ldap", "libsasl2"]
            return subprocess.run(check, check=False).returncode == 0
        except FileNotFoundError:
            return False

    if found():
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["install", "-y", "-q", "--no-install-recommends", *BUILD_PACKAGES]
        for args in (["update", "-q"], install):
            subprocess.run(
                ["apt-get", *args], capture_output=True, env=env, timeout=600, check=False
            )
        if found():
            return None
    return f"the headers mysqlclient and python-ldap build with are missing: {BUILD_PACKAGES}"


@dataclass(frozen=True)
class ImageVenv:
    """The scratch venv after the Dockerfile's install, and what it held before it."""

    before: dict[str, str]
    after: dict[str, str]
    install_report: str  # pip's lines on what it installed and uninstalled


@pytest.fixture(scope="module")
def image_venv(pypi) -> Iterator[ImageVenv]:
    """The image's set in a fresh venv (uv, --no-deps), then the Dockerfile's pip line on top.
    Built once per session; a lock keeps two sessions in this checkout off the same venv."""
    reason = build_headers_missing()
    if reason:
        skip_or_fail(reason)
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(VENV, ignore_errors=True)
        must(run([sys.executable, "-m", "venv", VENV], env=venv_env()))
        must(
            run(
                [
                    find_uv_bin(),
                    *("pip", "install", "--python", VENV / "bin" / "python", "--no-deps"),
                    *("--index-url", PYPI, "-r", PACKAGES, IMAGE_PIP),
                ],
                env=uv_env(),
            )
        )
        before = installed()
        pip_install = [VENV / "bin" / "python", "-m", *dockerfile_pip_install()]
        done = must(run(pip_install, env=venv_env()))
        report = re.findall(
            r"^\s*(?:Installing|Attempting|Successfully|ERROR).*$", output(done), re.M
        )
        yield ImageVenv(before, installed(), "\n".join(report))


# -- the set ------------------------------------------------------------------------------------


def test_the_committed_image_set_is_the_one_pypi_resolves(pypi):
    fresh, committed = resolve_image_set(), committed_image_set()
    diff = "\n".join(difflib.unified_diff(committed, fresh, "committed", "resolved", lineterm=""))
    assert fresh == committed, f"docker/image-packages.txt has drifted:\n{diff}"


def test_requirements_pin_every_shared_package_to_the_images_version():
    image, ours = pins(committed_image_set()), pins(REQUIREMENTS.read_text().splitlines())
    moved = {name: (v, image[name]) for name, v in ours.items() if image.get(name, v) != v}
    assert not moved, f"requirements.txt (ours, the image's): {moved}"


# -- the Dockerfile's install on top of it ------------------------------------------------------


def test_the_dockerfile_install_adds_only_named_packages_and_moves_none(image_venv):
    before, after = image_venv.before, image_venv.after
    assert before == {**pins(committed_image_set()), **pins([IMAGE_PIP])}
    moved = {name: (v, after.get(name)) for name, v in before.items() if after.get(name) != v}
    assert not moved, f"(image, after): {moved}\n{image_venv.install_report}"
    # every addition is one of requirements.txt's pins: none floats in as a dependency
    added = {name: v for name, v in after.items() if name not in before}
    ours = pins(REQUIREMENTS.read_text().splitlines())
    unpinned = {name: v for name, v in added.items() if ours.get(name) != v}
    assert not unpinned, f"added without a pin in requirements.txt: {unpinned}"


def test_pip_check_is_clean(image_venv):
    done = run([VENV / "bin" / "python", "-m", "pip", "check"], env=venv_env())
    assert done.returncode == 0, output(done)


def test_every_provider_and_the_deployments_classes_import(image_venv, tmp_path):
    code = f"""
import importlib, importlib.metadata as md, json
failures, checked = [], []
targets = [
    ep.value.split(":")[0].rsplit(".", 1)[0]
    for dist in md.distributions()
    if dist.metadata["Name"].startswith("apache-airflow-providers-")
    for ep in dist.entry_points
    if ep.group == "apache_airflow_provider"
]
for target in targets + {list(DEPLOYMENT_IMPORTS)!r}:
    module, _, attr = target.partition(":")
    try:
        loaded = importlib.import_module(module)
        if attr:
            getattr(loaded, attr)
        checked.append(target)
    except Exception as exc:
        failures.append(f"{{target}}: {{type(exc).__name__}}: {{exc}}")
print(json.dumps({{"checked": checked, "failures": failures}}))
"""
    result = venv_python(code, AIRFLOW_HOME=str(tmp_path))
    assert not result["failures"], "\n".join(result["failures"])
    providers = [name for name in image_venv.after if name.startswith("apache-airflow-providers-")]
    assert len(result["checked"]) == len(providers) + len(DEPLOYMENT_IMPORTS)


def test_db_migrate_with_fab_creates_fabs_tables(image_venv, tmp_path):
    done = run(
        [VENV / "bin" / "airflow", "db", "migrate"],
        env=venv_env(
            AIRFLOW_HOME=str(tmp_path),
            AIRFLOW__CORE__AUTH_MANAGER=(
                "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
            ),
        ),
    )
    assert done.returncode == 0, output(done)[-4000:]
    assert "Traceback" not in output(done), output(done)[-4000:]
    with sqlite3.connect(tmp_path / "airflow.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"ab_user", "ab_role", "ab_permission", "ab_user_role", "dag_run"} <= tables


def test_the_dags_and_the_plugin_load(image_venv, tmp_path):
    env = {
        "AIRFLOW_HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    }
    bag = venv_python(
        "import json; from airflow.dag_processing.dagbag import DagBag; "
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r}); "
        "print(json.dumps({'errors': bag.import_errors, 'dag_ids': sorted(bag.dag_ids)}))",
        **env,
    )
    assert bag["errors"] == {}
    assert set(bag["dag_ids"]) >= SEGMENT_DAGS, bag["dag_ids"]

    listed = must(
        run([VENV / "bin" / "airflow", "plugins", "--output", "json"], env=venv_env(**env))
    )
    plugins = {p["name"]: p for p in json.loads(listed.stdout.strip().splitlines()[-1])}
    assert "connector_segments" in plugins, listed.stdout + listed.stderr
    apps = plugins["connector_segments"]["fastapi_apps"]
    assert [app["url_prefix"] for app in apps] == ["/connector-segments"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_image --write  (re-resolves " + str(PACKAGES) + ")")
    write_image_packages()
