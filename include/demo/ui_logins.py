"""The demo's Airflow logins for `make ui`: fixed passwords, printed with the address.

    python -m include.demo.ui_logins

`airflow standalone` forces SimpleAuthManager, which takes its users and roles from
`[core] simple_auth_manager_users` (`user:role`; the Makefile sets "admin:admin,viewer:viewer")
and their passwords from its passwords file
(`$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated` unless
`[core] simple_auth_manager_passwords_file` names another), generating one only for a user the
file lacks. So the demo users' passwords are written there first; other users' entries
are kept. A file that is not a JSON object (which would stop the API server) is replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEMO_PASSWORDS = {"admin": "admin", "viewer": "viewer"}  # local demo only: the UI binds 127.0.0.1
GENERATED_NAME = "simple_auth_manager_passwords.json.generated"


def passwords_file() -> Path:
    """Where SimpleAuthManager reads passwords (its `get_generated_password_file`, without
    importing the API server)."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("core", "simple_auth_manager_passwords_file", fallback=None)
    return Path(configured or os.path.join(AIRFLOW_HOME, GENERATED_NAME))


def configured_users() -> list[tuple[str, str]]:
    """(user, role) from `[core] simple_auth_manager_users`."""
    from airflow.configuration import conf

    users = (entry.split(":") for entry in conf.getlist("core", "simple_auth_manager_users"))
    return [(user[0], user[1] if len(user) > 1 else "") for user in users]


def write_demo_passwords(path: Path, users: list[str]) -> dict[str, str]:
    """Set the demo password of each of `users` that has one; returns the file's passwords."""
    try:
        passwords = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        passwords = {}
    if not isinstance(passwords, dict):
        passwords = {}
    passwords.update({user: DEMO_PASSWORDS[user] for user in users if user in DEMO_PASSWORDS})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(passwords) + "\n")
    return passwords


def main() -> int:
    path = passwords_file()
    users = configured_users()
    passwords = write_demo_passwords(path, [user for user, _ in users])
    port = os.environ.get("AIRFLOW__API__PORT") or "8080"
    print(f"Airflow UI: http://localhost:{port}")
    for user, role in users:
        password = passwords.get(user)
        shown = f"password {password}" if password else f"password generated into {path}"
        print(f"  log in as {user} ({role}): {shown}")
    print(f"  (passwords are kept in {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
