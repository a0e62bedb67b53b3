"""Connection details as plain data: what the Airflow glue hands to clients and sources."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow Connection a client may use (no Airflow import needed)."""

    conn_id: str
    conn_type: str
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ConnectionGetter = Callable[[str], ConnectionInfo]
