"""Makes the deployment's first user: `admin`, role Admin, with the password from
`AIRFLOW_ADMIN_PASSWORD`; compose's init service runs it after `airflow db migrate`.

    AIRFLOW_ADMIN_PASSWORD=... python docker/create_admin.py

Users and roles live in Airflow's metadata DB (FAB's auth manager): this one logs in first and
adds the others (`airflow users create`, or the UI's Security menu; docs/production.md, "Users,
roles and per-team access"). An existing `admin` gets the password from the environment again,
so changing it in `.env` changes it at the next `docker compose up airflow-init`; its roles and
the other users are left as they are. The password is never printed.
"""

from __future__ import annotations

import os
import sys

PASSWORD_ENV = "AIRFLOW_ADMIN_PASSWORD"
ADMIN = "admin"


def main() -> int:
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        print(
            f"{PASSWORD_ENV} is not set: the admin's password must come from .env", file=sys.stderr
        )
        return 1
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        manager = appbuilder.sm
        user = manager.find_user(username=ADMIN)
        if user is None:
            made = manager.add_user(
                ADMIN, "Airflow", "Admin", "admin@localhost", manager.find_role("Admin"), password
            )
            if not made:
                print(f"could not create the Airflow user '{ADMIN}'", file=sys.stderr)
                return 1
            print(f"Airflow user '{ADMIN}' created (role Admin), password from {PASSWORD_ENV}")
        else:
            manager.reset_password(user.id, password)
            print(f"password of Airflow user '{ADMIN}' set from {PASSWORD_ENV}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
