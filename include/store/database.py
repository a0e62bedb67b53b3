"""The Netmera database (`netmera_db`): Netmera's user table and our segment store, in one
database reached through one SQLAlchemy engine per process.

Every part of a refresh, the CLI and the webhook receiver asks `include.orchestration.connections.
netmera_database()` for this object instead of building an engine of its own: under
CeleryExecutor with PostgreSQL each engine holds its own pool of server connections, and a
refresh used to build one per step (two in `match`, two in a send), none disposed. The store's
migrations run once per process and database, on first use of any of its parts.
"""

from __future__ import annotations

import atexit
import json
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from include.matching.user_table import UserTable

NETMERA_DB_CONN_ID = "netmera_db"  # Netmera's user table and the segment store

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.clients.connection import ConnectionInfo
    from include.store import SegmentStore
    from include.store.sends import SendLedger
    from include.store.vendor_budgets import SharedBudgets


class NetmeraDatabase:
    """One `netmera_db` Connection's database: its engine and the objects built on it."""

    def __init__(self, info: ConnectionInfo, engine: sa.Engine) -> None:
        self.info, self.engine = info, engine
        self.users = UserTable.from_extras(info.extra)

    @cached_property
    def store(self) -> SegmentStore:
        from include.store import SegmentStore

        return SegmentStore(self.engine)

    @cached_property
    def sends(self) -> SendLedger:
        from include.store.sends import SendLedger

        return SendLedger(self.engine)

    @cached_property
    def budgets(self) -> SharedBudgets:
        """Vendor budgets shared by every worker (`include.store.vendor_budgets`)."""
        from include.store.vendor_budgets import SharedBudgets

        return SharedBudgets(self.engine)


class Databases:
    """`NetmeraDatabase` objects by connection, sharing one engine per database URL; built
    once per process (a task, the CLI, the API server) and disposed together at its exit."""

    def __init__(self) -> None:
        self._engines: dict[str, sa.Engine] = {}
        self._databases: dict[tuple[str, str], NetmeraDatabase] = {}
        self._lock = threading.Lock()

    def get(self, info: ConnectionInfo) -> NetmeraDatabase:
        from include.clients.database import engine_for, sqlalchemy_url

        url = sqlalchemy_url(info).render_as_string(hide_password=False)
        key = (url, json.dumps(info.extra, sort_keys=True, default=str))  # extras: the user table
        with self._lock:
            if key not in self._databases:
                if url not in self._engines:
                    self._engines[url] = engine_for(info)
                self._databases[key] = NetmeraDatabase(info, self._engines[url])
            return self._databases[key]

    def dispose(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
            self._databases.clear()


DATABASES = Databases()
atexit.register(DATABASES.dispose)
