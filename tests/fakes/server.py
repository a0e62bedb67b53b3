"""The fakes' shared server base, which lives in `include.demo.fake_server` (the demo's vendor
sandboxes are built on it too; product code must not import tests/). Its docstring has the fault
API every fake shares.
"""

from __future__ import annotations

from include.demo.fake_server import (
    FAULT_KINDS,
    FakeServer,
    Fault,
    FaultQueue,
    Recorded,
    Response,
    format_retry_after,
    json_response,
    path_matcher,
)

__all__ = [
    "FAULT_KINDS",
    "FakeServer",
    "Fault",
    "FaultQueue",
    "Recorded",
    "Response",
    "format_retry_after",
    "json_response",
    "path_matcher",
]
