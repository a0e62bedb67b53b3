"""The demo's vendor sandboxes: Netmera's REST API on a fixed port of 127.0.0.1, keeping what it
was sent in a JSON file (Send Message and Message Report work on the embedded default, and a
send keeps its stats across restarts), and Mixpanel and Amplitude (`vendor_sandboxes`), on free
ports of 127.0.0.1, each holding the example segment's cohort. All are the fakes the tests use.

    python -m include.demo.sandbox [--port 8975] [--state .local/netmera_sandbox.json]

Netmera: the operations the product calls (createNotificationDefinition, sendNotification,
getPushStats, with the `X-netmera-api-key` header); it records every delivery and answers
getPushStats from them (a stable ~5 % failed, ~25 % clicked per extId). It messages nobody.
The embedded default's `netmera_default` Connection points at it (Makefile):
host `http://127.0.0.1:8975/rest/3.0`, password `DEMO_API_KEY`. `GET /sandbox/status` there
(with the key) tells the launcher (`include.demo.with_sandbox`) that the port is the sandbox's
and where Mixpanel and Amplitude listen, for their Connections.

The state file is rewritten (atomically) before each accepted POST is answered. One that
cannot be read is moved aside (`<file>.unreadable-<time>`) and the sandbox starts empty.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from include.demo.fake_netmera import PREFIX, FakeNetmera
from include.demo.fake_server import FakeServer, Recorded, Response, json_response
from include.demo.vendor_sandboxes import amplitude_sandbox, mixpanel_sandbox

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 8975
PORT_ENV = "CONNECTOR_SEGMENTS_SANDBOX_PORT"
STATE_ENV = "CONNECTOR_SEGMENTS_SANDBOX_STATE"
DEFAULT_STATE = ROOT / ".local" / "netmera_sandbox.json"
DEMO_API_KEY = "netmera-sandbox-demo-key"  # a demo secret by design: the sandbox sends nothing
STATUS_PATH = "/sandbox/status"
SERVICE = "netmera-sandbox"

log = logging.getLogger(__name__)


def configured_port() -> int:
    return int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


def configured_state() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)


def api_url(port: int) -> str:
    """The base URL the `netmera_default` Connection gives as host."""
    return f"http://127.0.0.1:{port}{PREFIX.rstrip('/')}"


class NetmeraSandbox(FakeNetmera):
    """`FakeNetmera` whose definitions and deliveries live in `state_file`."""

    def __init__(self, state_file: Path, api_key: str = DEMO_API_KEY) -> None:
        super().__init__(api_key=api_key)
        self.state_file = Path(state_file)
        self.vendors: dict[str, str] = {}  # the other sandboxes' base URLs, by vendor
        self._saving = threading.Lock()
        self._load()

    def status(self) -> dict[str, Any]:
        definitions, deliveries = self.definitions, self.deliveries
        return {
            "service": SERVICE,
            "pid": os.getpid(),
            "state_file": str(self.state_file),
            "notifications": len(definitions),
            "deliveries": len(deliveries),
            **self.vendors,
        }

    def route(self, req: Recorded) -> Response:
        if req.path == STATUS_PATH:
            return json_response(self.status())
        try:
            response = super().route(req)
            if req.method == "POST" and response.status == 200:
                self._save()  # before the answer: what Netmera accepted is never forgotten
                log.info("%s: %s", req.path.removeprefix(PREFIX), _summary(req, response))
        except Exception:
            log.exception("%s failed", req.path)  # the base answers 500 and keeps the traceback
            raise
        return response

    def _load(self) -> None:
        if not self.state_file.exists():
            return
        try:
            self.load_state(json.loads(self.state_file.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not UTF-8 included
            aside = self.state_file.with_name(
                f"{self.state_file.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
            )
            self.state_file.replace(aside)
            log.warning("state file unreadable (%s): moved to %s, starting empty", exc, aside)

    def _save(self) -> None:
        with self._saving:  # one writer at a time, each with the latest state
            state = self.dump_state()
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.state_file.with_name(self.state_file.name + ".partial")
            with partial.open("w", encoding="utf-8") as handle:
                json.dump(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(self.state_file)


def _summary(req: Recorded, response: Response) -> str:
    """A log line without identifiers: the notification key and how many extIds."""
    body = json.loads(req.body or b"{}")
    key = json.loads(response.body).get("notificationKey")
    ext_ids = (body.get("target") or {}).get("extId") or body.get("extIds")
    parts = [] if key is None else [f"notificationKey {key}"]
    if isinstance(ext_ids, list):
        parts.append(f"{len(ext_ids)} extIds")
    return ", ".join(parts) or "accepted"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.demo.sandbox")
    parser.add_argument("--port", type=int, default=configured_port(), help=f"env {PORT_ENV}")
    parser.add_argument("--state", type=Path, default=configured_state(), help=f"env {STATE_ENV}")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one is gone (used by the launcher)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sandbox %(message)s")
    parent = os.getppid()
    sandbox = NetmeraSandbox(args.state)
    # Mixpanel and Amplitude first, so that the status the launcher reads names them.
    vendors: dict[str, FakeServer] = {
        "mixpanel": mixpanel_sandbox().start(),
        "amplitude": amplitude_sandbox().start(),
    }
    sandbox.vendors = {name: server.base_url for name, server in vendors.items()}
    try:
        sandbox.start(args.port)
    except OSError as exc:
        for server in vendors.values():
            server.stop()
        print(
            f"Netmera sandbox: cannot listen on 127.0.0.1:{args.port} ({exc.strerror}); "
            f"set {PORT_ENV} to a free port",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    log.info(
        "Netmera listening on %s (API key %s; state %s: %d notifications)",
        api_url(sandbox.port),
        DEMO_API_KEY,
        args.state,
        len(sandbox.definitions),
    )
    for name, url in sandbox.vendors.items():
        log.info("%s listening on %s", name.capitalize(), url)
    while not stop.wait(1):
        if args.exit_with_parent and os.getppid() != parent:
            log.info("the launcher is gone: stopping")
            break
    for server in (sandbox, *vendors.values()):
        server.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
