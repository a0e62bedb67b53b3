"""Sets the Airflow admin's password from `AIRFLOW_ADMIN_PASSWORD`; the compose file runs it in
the api-server container before `airflow api-server`.

    AIRFLOW_ADMIN_PASSWORD=... python docker/set_admin_password.py

SimpleAuthManager (the auth manager the Connector Segments page is built and tested on) takes
its users from `[core] simple_auth_manager_users` and their passwords from its passwords file,
generating (and printing to the log) one only for a user the file lacks. Writing the admin's
password there first makes it the deployment's secret, set in `.env`, and changing it there
changes it at the next start. Other users' entries are kept. The file is the service user's
alone (mode 0600).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PASSWORD_ENV = "AIRFLOW_ADMIN_PASSWORD"
ADMIN = "admin"


def passwords_file() -> Path:
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    return Path(SimpleAuthManager.get_generated_password_file())


def kept_passwords(path: Path) -> dict[str, str]:
    """The file's entries; a missing file or one that is not a JSON object (which would stop
    the API server) counts as empty."""
    try:
        passwords = json.loads(path.read_text() or "{}")
    except (FileNotFoundError, ValueError):
        return {}
    return passwords if isinstance(passwords, dict) else {}


def write_password(path: Path, user: str, password: str) -> None:
    passwords = {**kept_passwords(path), user: password}
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through os.open
    with os.fdopen(descriptor, "w") as file:
        file.write(json.dumps(passwords) + "\n")


def main() -> int:
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        print(
            f"{PASSWORD_ENV} is not set: the admin's password must come from .env", file=sys.stderr
        )
        return 1
    path = passwords_file()
    write_password(path, ADMIN, password)
    print(f"password of Airflow user '{ADMIN}' set from {PASSWORD_ENV} in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
