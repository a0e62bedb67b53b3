"""The embedded default's vendor sandboxes, as `make demo` and `make ui` run them: Netmera on a
port of 127.0.0.1 that a real send reaches, whose stats Message Report shows, and whose state
survives a restart; Mixpanel and Amplitude, whose cohorts the example segments read through
their connectors; the launcher that runs a command with them (safe to run again, stopped with
the command, on SIGTERM, and even when the launcher is killed); and the UI's fixed demo logins.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from include.demo.fake_amplitude import FakeAmplitude
from include.demo.fake_mixpanel import FakeMixpanel
from include.demo.fake_netmera import push_outcome
from include.demo.samples import AMPLITUDE_FILE, DATA_DIR, MIXPANEL_FILE
from include.demo.sandbox import DEMO_API_KEY, api_url
from include.demo.vendor_sandboxes import (
    CONNECTION_VARIABLES,
    amplitude_sandbox,
    connections,
    mixpanel_sandbox,
)
from tests.conftest import (
    ROOT,
    airflow_api_server,
    cli_json,
    free_port,
    run_segment,
    write_csv,
    write_users,
)

SEGMENT = "shoppers"
EXT_IDS = [f"ext-{i:03d}" for i in range(1, 41)]
SANDBOX = [sys.executable, "-m", "include.demo.sandbox"]
LAUNCHER = [sys.executable, "-m", "include.demo.with_sandbox"]


def status(port: int) -> dict:
    answer = requests.get(
        f"http://127.0.0.1:{port}/sandbox/status",
        headers={"X-netmera-api-key": DEMO_API_KEY},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def sandbox(port: int, state: Path) -> Iterator[subprocess.Popen]:
    """`python -m include.demo.sandbox` on `port`; stopped (SIGTERM) on exit, which
    must be clean."""
    with state.with_suffix(".log").open("ab") as log:
        process = subprocess.Popen(
            [*SANDBOX, "--port", str(port), "--state", str(state)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for(lambda: process.poll() is not None or listening(port), "the sandbox")
        assert process.poll() is None, state.with_suffix(".log").read_text()
        yield process
    finally:
        process.terminate()
        assert process.wait(10) == 0, state.with_suffix(".log").read_text()


@pytest.fixture
def segment(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """40 matched users with an extId and 5 without; netmera_default is the sandbox's
    Connection as the Makefile writes it. Returns the sandbox's port."""
    users = [(f"nm-{i}", ext, None, None, None, True) for i, ext in enumerate(EXT_IDS)]
    users += [(f"nm-x{i}", None, f"u{i}@example.com", None, None, True) for i in range(5)]
    write_users(workspace / "netmera.db", users)
    rows = [[f"s{i}", ext, ""] for i, ext in enumerate(EXT_IDS)]
    rows += [[f"sx{i}", "", f"u{i}@example.com"] for i in range(5)]
    write_csv(workspace / "audience.csv", ["uid", "ext", "email"], rows)
    config = {
        "id": SEGMENT,
        "name": "Shoppers",
        "source": {"type": "file", "path": str(workspace / "audience.csv")},
        "user_key": "uid",
        "identifiers": [
            {"field": "ext", "kind": "external_id"},
            {"field": "email", "kind": "email"},
        ],
        "campaign": {"title": "New in store", "text": "Have a look"},
    }
    (workspace / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    connection = {"conn_type": "http", "host": api_url(port), "password": DEMO_API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(connection))
    return port


def expected_stats(ext_ids: list[str]) -> dict[str, Counter]:
    """What getPushStats must answer for these deliveries, per platform."""
    stats: dict[str, Counter] = {}
    for ext_id in ext_ids:
        platform, failed, clicked = push_outcome(ext_id)
        counts = stats.setdefault(platform, Counter())
        counts["failed" if failed else "sent"] += 1
        counts["clicked"] += clicked
    return stats


@pytest.mark.dagrun
def test_a_send_reaches_the_sandbox_and_its_stats_survive_a_restart(
    segment: int, workspace: Path, capsys
):
    port, state = segment, workspace / "sandbox.json"
    with sandbox(port, state):
        assert run_segment(SEGMENT, send_message=True) == "success"
        assert status(port)["deliveries"] == len(EXT_IDS)
        (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["status"], report["recipients"], report["not_addressable"]) == ("sent", 40, 5)
    assert report["delivery_status"] == "FINISHED"
    answered = {
        s["platform"]: Counter({k: s[k] for k in ("sent", "failed", "clicked")})
        for s in report["stats"]
    }
    assert {p: +c for p, c in answered.items()} == {
        p: +c for p, c in expected_stats(EXT_IDS).items()
    }
    saved = json.loads(state.read_text())
    assert sorted(ext for _key, ext, _params in saved["deliveries"]) == EXT_IDS

    with sandbox(port, state):  # restarted: the same stats, and no notification key reused
        assert cli_json(capsys, "report", SEGMENT) == [report]
        assert run_segment(SEGMENT, send_message=True, refresh=False, send_key="2") == "success"
        keys = [r["notification_key"] for r in cli_json(capsys, "report", SEGMENT)]
    assert keys == [report["notification_key"] + 1, report["notification_key"]]


def test_an_unreadable_state_file_is_moved_aside_and_the_sandbox_starts_empty(tmp_path: Path):
    state = tmp_path / "sandbox.json"
    state.write_text('{"next_key": 3, "definitions": {')  # cut short
    port = free_port()
    with sandbox(port, state):
        assert status(port)["notifications"] == 0
    (aside,) = tmp_path.glob("sandbox.json.unreadable-*")
    assert aside.read_text().startswith('{"next_key": 3')


# -- the launcher (python -m include.demo.with_sandbox COMMAND...) ------------------------------


def launcher_env(port: int, state: Path, **extra: str) -> dict[str, str]:
    ours = {"AIRFLOW_CONN_NETMERA_DEFAULT", *CONNECTION_VARIABLES.values()}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(
        CONNECTOR_SEGMENTS_SANDBOX_PORT=str(port), CONNECTOR_SEGMENTS_SANDBOX_STATE=str(state)
    )
    return {**env, **extra}


def launch(port: int, state: Path, code: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LAUNCHER, sys.executable, "-c", code],
        env=launcher_env(port, state, **extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


# The command the launcher runs: it finds the sandboxes through the Connections, as Airflow
# would, and lists the Mixpanel and Amplitude cohorts.
PROBE_THROUGH_CONNECTION = """
import json, os, sys, requests
conn = json.loads(os.environ["AIRFLOW_CONN_NETMERA_DEFAULT"])
host = conn["host"].removesuffix("/rest/3.0")
answer = requests.get(host + "/sandbox/status", headers={"X-netmera-api-key": conn["password"]})
print("STATUS", json.dumps(answer.json()))
mixpanel = json.loads(os.environ["AIRFLOW_CONN_MIXPANEL_DEFAULT"])
cohorts = requests.get(
    mixpanel["host"] + "/api/query/cohorts/list",
    params={"project_id": mixpanel["extra"]["project_id"]},
    auth=(mixpanel["login"], mixpanel["password"]),
)
print("MIXPANEL", json.dumps(cohorts.json()))
amplitude = json.loads(os.environ["AIRFLOW_CONN_AMPLITUDE_DEFAULT"])
cohorts = requests.get(
    amplitude["host"] + "/api/3/cohorts", auth=(amplitude["login"], amplitude["password"])
)
print("AMPLITUDE", json.dumps(cohorts.json()))
sys.exit(3)
"""


def printed(done: subprocess.CompletedProcess, what: str):
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(what + " ")]
    return json.loads(line.removeprefix(what + " "))


def test_the_launcher_runs_the_command_with_the_sandbox_and_stops_it_after(tmp_path: Path):
    port, state = free_port(), tmp_path / "sandbox.json"
    done = launch(port, state, PROBE_THROUGH_CONNECTION)
    assert done.returncode == 3, done.stderr  # the command's exit code
    sandboxes = printed(done, "STATUS")
    assert sandboxes["state_file"] == str(state)
    assert f"Netmera sandbox: {api_url(port)}" in done.stdout
    assert [c["name"] for c in printed(done, "MIXPANEL")] == ["PN_cart_abandoners"]
    assert [c["name"] for c in printed(done, "AMPLITUDE")["cohorts"]] == ["Churn risk - high"]
    for vendor in ("mixpanel", "amplitude"):  # on 127.0.0.1, stopped with the command too
        assert sandboxes[vendor].startswith("http://127.0.0.1:")
        assert not listening(int(sandboxes[vendor].rpartition(":")[2]))
    assert not listening(port)  # stopped with the command
    assert "listening on" in state.with_suffix(".log").read_text()


def test_a_sandbox_already_running_is_used_and_left_running(tmp_path: Path):
    port, state = free_port(), tmp_path / "sandbox.json"
    with sandbox(port, state) as running:
        done = launch(port, state, PROBE_THROUGH_CONNECTION)
        assert done.returncode == 3, done.stderr
        assert f"already running, pid {running.pid}" in done.stdout
        assert status(port)["pid"] == running.pid  # still up: it was not the launcher's


def test_the_launcher_refuses_a_port_held_by_something_else(tmp_path: Path):
    other = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        port = other.server_address[1]
        marker = tmp_path / "ran"
        done = launch(port, tmp_path / "sandbox.json", f"open({str(marker)!r}, 'w')")
    finally:
        other.shutdown()
        other.server_close()
    assert done.returncode == 2
    assert "is in use by something that is not the Netmera sandbox" in done.stderr
    assert "CONNECTOR_SEGMENTS_SANDBOX_PORT" in done.stderr
    assert not marker.exists()


def test_the_launcher_refuses_a_netmera_connection_that_is_not_the_sandbox(tmp_path: Path):
    port, marker = free_port(), tmp_path / "ran"
    real = {"conn_type": "http", "host": "https://restapi.netmera.com/rest/3.0", "password": "k"}
    done = launch(
        port,
        tmp_path / "sandbox.json",
        f"open({str(marker)!r}, 'w')",
        AIRFLOW_CONN_NETMERA_DEFAULT=json.dumps(real),
    )
    assert done.returncode == 2
    assert "restapi.netmera.com" in done.stderr and "not at the Netmera sandbox" in done.stderr
    assert not marker.exists() and not listening(port)


@pytest.mark.parametrize("vendor", ["MIXPANEL", "AMPLITUDE"])
def test_the_launcher_refuses_a_vendor_connection_of_its_own(tmp_path: Path, vendor: str):
    """The demo reads its cohorts from the sandboxes, never from a Connection the shell has."""
    port, marker = free_port(), tmp_path / "ran"
    real = {"conn_type": "http", "host": "https://eu.mixpanel.com", "login": "a", "password": "b"}
    done = launch(
        port,
        tmp_path / "sandbox.json",
        f"open({str(marker)!r}, 'w')",
        **{f"AIRFLOW_CONN_{vendor}_DEFAULT": json.dumps(real)},
    )
    assert done.returncode == 2
    assert f"AIRFLOW_CONN_{vendor}_DEFAULT set" in done.stderr and "unset it" in done.stderr
    assert not marker.exists() and not listening(port)


# -- the example segments against the Mixpanel and Amplitude sandboxes ----------------------------


def file_twin(config: dict, data_file: str) -> dict:
    """The same segment reading the bundled file its sandbox serves."""
    twin = {**config, "id": config["id"] + "_file", "name": config["name"] + " (file)"}
    return twin | {"source": {"type": "file", "path": str(DATA_DIR / data_file)}}


@pytest.mark.dagrun
def test_the_example_vendor_segments_read_the_sandboxes_through_their_connectors(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """`make demo`'s Mixpanel and Amplitude segments, run through their DAGs against the
    sandboxes: they count what the same segments count reading the bundled files directly
    (the file's repeated and id-less rows are no Mixpanel profiles, and were never counted)."""
    subprocess.run(
        [sys.executable, "-m", "include.demo.seed", "--db", str(workspace / "netmera.db"),
         "--warehouse", str(workspace / "warehouse.db")],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    folder, examples = workspace / "segments", ROOT / "include" / "segments"
    pairs = {"cart_abandoners": MIXPANEL_FILE, "churn_risk": AMPLITUDE_FILE}
    for segment_id, data_file in pairs.items():
        config = yaml.safe_load((examples / f"{segment_id}.yaml").read_text())
        for each in (config, file_twin(config, data_file)):
            (folder / f"{each['id']}.yaml").write_text(yaml.safe_dump(each))
    mixpanel: FakeMixpanel
    amplitude: FakeAmplitude
    with mixpanel_sandbox() as mixpanel, amplitude_sandbox() as amplitude:
        for variable, value in connections(mixpanel.base_url, amplitude.base_url).items():
            monkeypatch.setenv(variable, value)
        for segment_id in (*pairs, *(f"{s}_file" for s in pairs)):
            assert run_segment(segment_id) == "success", segment_id
    assert len(mixpanel.requests_to(FakeMixpanel.ENGAGE)) >= 5  # 1,000 profiles a page
    assert [r.status for r in amplitude.storage.requests] == [200]  # the pre-signed download
    for segment_id, vendor in (("cart_abandoners", "mixpanel"), ("churn_risk", "amplitude")):
        details = cli_json(capsys, "details", segment_id)
        twin = cli_json(capsys, "details", f"{segment_id}_file")
        assert (details["source_type"], details["status"]) == (vendor, "Ready")
        counts = ("connector_users", "netmera_users", "reachable")
        assert {k: details[k] for k in counts} == {k: twin[k] for k in counts}
        assert details["netmera_users"] > 0.8 * details["connector_users"]


# Stops on SIGINT by Python's default KeyboardInterrupt, as `airflow standalone` does (its clean
# stop), and says so.
WAIT_FOR_SIGINT = """
import os, pathlib, sys, time
here = pathlib.Path(sys.argv[1])
(here / "ready").write_text(str(os.getpid()))
try:
    time.sleep(60)
except KeyboardInterrupt:
    (here / "stopped").write_text("KeyboardInterrupt")
"""


def start_launcher(port: int, state: Path, workdir: Path) -> subprocess.Popen:
    """The launcher as a script's background job starts: no terminal, SIGINT ignored."""
    return subprocess.Popen(
        [*LAUNCHER, sys.executable, "-c", WAIT_FOR_SIGINT, str(workdir)],
        env=launcher_env(port, state),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # signals reach only whom they are sent to
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )


def stop_command(workdir: Path) -> None:
    """The command runs in a process group of its own: end it by its id if it is left."""
    with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
        os.kill(int((workdir / "ready").read_text()), signal.SIGKILL)


def test_sigterm_stops_the_command_with_sigint_and_then_the_sandbox(tmp_path: Path):
    port, state = free_port(), tmp_path / "sandbox.json"
    launcher = start_launcher(port, state, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), "the command")
        assert listening(port)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        stop_command(tmp_path)
    assert (tmp_path / "stopped").read_text() == "KeyboardInterrupt"
    assert not listening(port)


def test_a_ctrl_c_reaches_the_launcher_which_stops_the_command_alone(tmp_path: Path):
    """A terminal's Ctrl-C signals the whole foreground group: here the launcher's (a group of
    its own), which must pass SIGINT on to the command, in a group of its own too."""
    port, state = free_port(), tmp_path / "sandbox.json"
    launcher = start_launcher(port, state, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), "the command")
        command = int((tmp_path / "ready").read_text())
        assert os.getpgid(command) != os.getpgid(launcher.pid)
        os.killpg(launcher.pid, signal.SIGINT)
        assert launcher.wait(20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        stop_command(tmp_path)
    assert (tmp_path / "stopped").read_text() == "KeyboardInterrupt"
    assert not listening(port)


def test_a_killed_launcher_leaves_no_sandbox_behind(tmp_path: Path):
    port, state = free_port(), tmp_path / "sandbox.json"
    launcher = start_launcher(port, state, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), "the command")
        assert listening(port)
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher, not the sandbox
        launcher.wait()
        stop_command(tmp_path)
    wait_for(lambda: not listening(port), "the orphaned sandbox to stop", timeout=10)


# -- make ui's logins ------------------------------------------------------------------------------


def test_make_ui_logins_are_fixed_and_accepted_by_airflow(tmp_path: Path, airflow_db: Path):
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"admin": "generated-earlier", "op": "kept"}))  # a stale file
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    shown = subprocess.run(
        [sys.executable, "-m", "include.demo.ui_logins"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Airflow UI: http://localhost:8080" in shown
    assert "log in as admin (admin): password admin" in shown
    assert "log in as viewer (viewer): password viewer" in shown
    assert json.loads(passwords.read_text()) == {"admin": "admin", "viewer": "viewer", "op": "kept"}

    with airflow_api_server(tmp_path / "api.log", **env) as base:
        for user in ("admin", "viewer"):
            answer = requests.post(
                f"{base}/auth/token", json={"username": user, "password": user}, timeout=10
            )
            assert answer.status_code == 201, (user, answer.text)
