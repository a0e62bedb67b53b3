"""The settings `make ui` gives Airflow, so that its parts find each other on this machine.

Airflow's parts talk over HTTP. Task workers call the API server's execution API at
`[core] execution_api_server_url`, which Airflow otherwise derives from `[api] base_url` or
takes as http://localhost:8080/execution/ whatever `[api] port` says: moved with
AIRFLOW__API__PORT alone, every task failed before it began. The API server reads a running
task's log from the log server at `[logging] worker_log_server_port` (a triggerer's at
`trigger_log_server_port`) of the task's hostname.

`resolve()` derives what the user left unset from `[api] port` and `[api] host`, and refuses at
once, naming the variable to set, a combination that cannot work: a URL naming this machine on
another port than the API server's, or two parts (the Netmera sandbox too) on one port;
`check_free()` refuses a port another process holds.
Only Airflow's configuration is read (environment and airflow.cfg); nothing is started.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from include.demo.sandbox import DEFAULT_PORT, PORT_ENV

LOOPBACK = "127.0.0.1"
# Names a URL may give this machine; a URL naming another host may be a proxy and is left alone.
THIS_MACHINE = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""}
HOSTNAME_CALLABLE = "include.demo.ui_settings.loopback_hostname"


class SettingsError(ValueError):
    """A setting `make ui` cannot work with; the message names the variable to set."""


@dataclass(frozen=True)
class LocalAirflow:
    api_host: str  # where the API server listens
    reach_host: str  # where a client on this machine finds it
    api_port: int
    path: str  # the UI's sub-path ("" or e.g. "/airflow", from `[api] base_url`)
    execution_api_url: str
    worker_log_port: int
    trigger_log_port: int

    @property
    def ui_url(self) -> str:
        host = "localhost" if self.reach_host == LOOPBACK else self.reach_host
        return f"http://{host}:{self.api_port}{self.path}/"

    @property
    def health_url(self) -> str:
        return f"http://{self.reach_host}:{self.api_port}{self.path}/api/v2/monitor/health"

    def env(self) -> dict[str, str]:
        """What every part of this Airflow must see beside the user's environment."""
        return {
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": self.execution_api_url,
            # The log servers listen on 127.0.0.1 only: the API server must look for them there.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
        }


def loopback_hostname() -> str:
    """The hostname Airflow records for a task or triggerer (`[core] hostname_callable`)."""
    return LOOPBACK


def variable(section: str, key: str) -> str:
    return f"AIRFLOW__{section.upper()}__{key.upper()}"


def resolve() -> LocalAirflow:
    """The settings, from Airflow's configuration."""
    get = _configured
    port = _conf_port("api", "port", 8080)
    host = get("api", "host") or "0.0.0.0"
    reach = LOOPBACK if host in THIS_MACHINE else host
    base_url = get("api", "base_url") or ""
    _same_port(base_url, port, variable("api", "base_url"))
    path = urlsplit(base_url).path.rstrip("/")
    wanted = f"http://{reach}:{port}{path}/execution/"
    execution_api_url = get("core", "execution_api_server_url") or wanted
    _same_port(execution_api_url, port, variable("core", "execution_api_server_url"), wanted)
    worker_logs = _conf_port("logging", "worker_log_server_port", 8793)
    trigger_logs = _conf_port("logging", "trigger_log_server_port", 8794)
    sandbox = _port(PORT_ENV, os.environ.get(PORT_ENV), DEFAULT_PORT)
    owners: dict[int, str] = {}
    for name, value in (
        (variable("api", "port"), port),
        (variable("logging", "worker_log_server_port"), worker_logs),
        (variable("logging", "trigger_log_server_port"), trigger_logs),
        (PORT_ENV, sandbox),
    ):
        if value in owners:
            raise SettingsError(
                f"{name}={value} is the port of {owners[value]} too; give each its own port"
            )
        owners[value] = name
    return LocalAirflow(
        api_host=host,
        reach_host=reach,
        api_port=port,
        path=path,
        execution_api_url=execution_api_url,
        worker_log_port=worker_logs,
        trigger_log_port=trigger_logs,
    )


def check_free(settings: LocalAirflow) -> None:
    """SettingsError naming the variable when another process holds one of the ports."""
    wanted = [
        (settings.api_host, settings.api_port, variable("api", "port")),
        (LOOPBACK, settings.worker_log_port, variable("logging", "worker_log_server_port")),
        (LOOPBACK, settings.trigger_log_port, variable("logging", "trigger_log_server_port")),
    ]
    for host, port, name in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise SettingsError(
                        f"cannot listen on {host}:{port} ({exc.strerror}); check {name}"
                    ) from exc
                raise SettingsError(
                    f"{host}:{port} is in use (another Airflow, or an earlier `make ui` still "
                    f"running?); set {name} to a free port"
                ) from exc


def _conf_port(section: str, key: str, default: int) -> int:
    return _port(variable(section, key), _configured(section, key), default)


def _port(name: str, value: str | None, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise SettingsError(f"{name}={value!r} is not a port (1-65535)")
    return port


def _same_port(url: str, port: int, name: str, wanted: str | None = None) -> None:
    """A URL naming this machine must carry the API server's port."""
    parts = urlsplit(url)
    if not parts.scheme:
        return  # a path alone (base_url "/airflow"): no host, no port
    try:
        given = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        given = None
    if (parts.hostname or "") in THIS_MACHINE and given != port:
        fix = f"; unset it or set it to {wanted}" if wanted else f"; give it port {port}"
        raise SettingsError(
            f"{name}={url} is not on port {port}, where the API server listens "
            f"({variable('api', 'port')}){fix}"
        )


def _configured(section: str, key: str) -> str | None:
    """Airflow's setting (environment or airflow.cfg), None when unset."""
    from airflow.configuration import conf

    return conf.get(section, key, fallback=None)
