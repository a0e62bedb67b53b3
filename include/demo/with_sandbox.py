"""Run a command with the demo's vendor sandboxes up (`make demo`, `make ui`).

    python -m include.demo.with_sandbox COMMAND [ARGS...]

Starts `python -m include.demo.sandbox` in the background, Netmera on
CONNECTOR_SEGMENTS_SANDBOX_PORT (default 8975) with its state in CONNECTOR_SEGMENTS_SANDBOX_STATE
(default `.local/netmera_sandbox.json`; the log beside it), Mixpanel and Amplitude on free
ports, runs the command, and stops the sandboxes when the command ends, on Ctrl-C or SIGTERM
too. Safe to run again:

- A sandbox already answering on the port (an earlier `make ui` still running) is used and left
  running; something else on the port is an error naming the variable to change.
- The sandbox exits by itself if this launcher dies without stopping it (SIGKILL).
- `netmera_default` must point at the sandbox: `AIRFLOW_CONN_NETMERA_DEFAULT` is set to it when
  unset, and the command is refused when it names another host (never the real Netmera here).
  `mixpanel_default` and `amplitude_default` are set to the sandboxes, and the command is
  refused when either is already set (never the real vendors here).

Signals: the command runs in a process group of its own, so a Ctrl-C in the terminal reaches
the launcher (and make), not the command's processes; the launcher passes SIGINT, SIGTERM and
SIGHUP on to the command alone, as SIGINT. That is how `airflow standalone` stops cleanly: it
stops its scheduler, API server etc. itself (SIGTERM to it leaves its workers behind, and a
terminal's SIGINT to every process of the group killed LocalExecutor workers mid-queue and hung
the scheduler's shutdown). The command does not own the terminal: it must not read from it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from include.demo.sandbox import (
    DEMO_API_KEY,
    PORT_ENV,
    ROOT,
    SERVICE,
    STATUS_PATH,
    api_url,
    configured_port,
    configured_state,
)
from include.demo.vendor_sandboxes import CONNECTION_VARIABLES, connections

CONNECTION_ENV = "AIRFLOW_CONN_NETMERA_DEFAULT"
START_TIMEOUT = 20.0  # seconds for the sandbox to answer
STOP_TIMEOUT = 10.0
SANDBOX_COMMAND = (sys.executable, "-m", "include.demo.sandbox")


class SandboxError(RuntimeError):
    """The sandbox cannot be started or used: the message says why and what to change."""


def probe(port: int) -> dict[str, Any] | None:
    """The status of the sandbox on `port`, None when nothing listens there; SandboxError when
    something else does."""
    import requests

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    except ConnectionRefusedError:
        return None
    except OSError as exc:
        raise SandboxError(f"127.0.0.1:{port} cannot be reached ({exc})") from exc
    try:
        answer = requests.get(
            f"http://127.0.0.1:{port}{STATUS_PATH}",
            headers={"X-netmera-api-key": DEMO_API_KEY},
            timeout=3,
        )
        status = answer.json() if answer.status_code == 200 else None
    except (requests.RequestException, ValueError):
        status = None
    if not isinstance(status, dict) or status.get("service") != SERVICE:
        raise SandboxError(
            f"127.0.0.1:{port} is in use by something that is not the Netmera sandbox; "
            f"set {PORT_ENV} to a free port"
        )
    return status


def connection_env(port: int) -> dict[str, str]:
    """The environment for the command: `netmera_default` is the sandbox on `port`; neither
    vendor Connection may be set (`vendor_env` adds them once the sandboxes are up)."""
    env = dict(os.environ)
    vendors = sorted(variable for variable in CONNECTION_VARIABLES.values() if env.get(variable))
    if vendors:
        raise SandboxError(
            f"{' and '.join(vendors)} set: the demo reads its Mixpanel and Amplitude cohorts "
            "from the sandboxes, never from the real vendors; unset it"
        )
    wanted = {"conn_type": "http", "host": api_url(port), "password": DEMO_API_KEY}
    given = env.get(CONNECTION_ENV)
    if not given:
        env[CONNECTION_ENV] = json.dumps(wanted)
        return env
    host, port_given, password = _connection_target(given)
    if host not in ("127.0.0.1", "localhost") or port_given != port or password != DEMO_API_KEY:
        raise SandboxError(
            f"{CONNECTION_ENV} points at {host}:{port_given}, not at the Netmera sandbox "
            f"({api_url(port)} with the sandbox's API key); unset it or fix it"
        )
    return env


def _connection_target(value: str) -> tuple[str | None, int | None, str | None]:
    """(host, port, password) of an Airflow Connection given as JSON or as a URI."""
    if value.lstrip().startswith("{"):
        conn = json.loads(value)
        url = urlsplit(conn.get("host") or "")
        return url.hostname or conn.get("host"), url.port or conn.get("port"), conn.get("password")
    url = urlsplit(value)
    return url.hostname, url.port, unquote(url.password or "")


def vendor_env(env: dict[str, str], status: dict[str, Any], port: int) -> dict[str, str]:
    """`env` with `mixpanel_default` and `amplitude_default` pointing at the sandboxes that
    `status` names."""
    if not all(status.get(vendor) for vendor in CONNECTION_VARIABLES):
        raise SandboxError(
            f"the sandbox on 127.0.0.1:{port} (pid {status['pid']}) runs no Mixpanel and "
            "Amplitude (an older version): stop it and run this again"
        )
    return {**env, **connections(status["mixpanel"], status["amplitude"])}


def start_sandbox(port: int, state: Path) -> tuple[subprocess.Popen | None, dict[str, Any]]:
    """The sandbox process this launcher started (None when one was already running) and its
    status."""
    status = probe(port)
    if status is not None:
        print(f"Netmera sandbox: {api_url(port)} (already running, pid {status['pid']})")
        return None, status
    state.parent.mkdir(parents=True, exist_ok=True)
    log_path = state.with_suffix(".log")
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*SANDBOX_COMMAND, "--port", str(port), "--state", str(state), "--exit-with-parent"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,  # not hit by a Ctrl-C: it is stopped once the command ends
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        status = probe(port)
        if status is not None and status["pid"] == process.pid:
            print(f"Netmera sandbox: {api_url(port)} (state {state}, log {log_path})")
            return process, status
        if process.poll() is not None:
            if status is not None:  # another launcher's sandbox won the port meanwhile
                print(f"Netmera sandbox: {api_url(port)} (already running, pid {status['pid']})")
                return None, status
            raise SandboxError(f"the Netmera sandbox did not start: {_tail(log_path)}")
        time.sleep(0.2)
    stop_sandbox(process)
    raise SandboxError(
        f"the Netmera sandbox did not answer in {START_TIMEOUT:.0f} s; see {log_path}"
    )


def stop_sandbox(process: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_command(command: list[str], env: dict[str, str]) -> int:
    """Run `command` in a process group of its own and pass it SIGINT when this launcher is
    asked to stop (see the module docstring); its exit code."""
    child: subprocess.Popen | None = None
    stop_asked = False

    def pass_on(_signum: int, _frame: Any) -> None:
        nonlocal stop_asked
        stop_asked = True
        if child is not None:
            with suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)  # the command only, not its own workers

    # Handled here before the command starts, SIGINT is SIG_DFL in the command even when this
    # launcher was started with it ignored (a background job of a script).
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, pass_on) for sig in stops}
    try:
        try:
            child = subprocess.Popen(command, env=env, process_group=0)
        except OSError as exc:
            print(f"cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
            return 127
        if stop_asked:  # a signal came while it was starting
            child.send_signal(signal.SIGINT)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"see {path}"


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command or command[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if command else 2
    port, state = configured_port(), configured_state().resolve()
    sandbox = None
    try:
        env = connection_env(port)
        sandbox, status = start_sandbox(port, state)
        env = vendor_env(env, status, port)
    except SandboxError as exc:
        if sandbox is not None:
            stop_sandbox(sandbox)
        print(f"Netmera sandbox: {exc}", file=sys.stderr)
        return 2
    print(f"Mixpanel sandbox: {status['mixpanel']}; Amplitude sandbox: {status['amplitude']}")
    try:
        return run_command(command, env)
    finally:
        if sandbox is not None:
            stop_sandbox(sandbox)


if __name__ == "__main__":
    sys.exit(main())
