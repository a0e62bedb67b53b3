"""The fakes' shared server base, which lives in `include.demo.fake_server` (the demo's Netmera
sandbox is built on it too; product code must not import tests/). Its docstring has the fault
API every fake shares. Here too: the member generator behind the Mixpanel and Amplitude fakes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

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
    "fake_people",
    "format_retry_after",
    "json_response",
    "path_matcher",
]


def fake_people(
    n: int, seed: int = 0, with_email: bool = True, with_phone: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """Deterministic (index, {"email", "phone"}) pairs behind both fakes' member generators."""
    rng = random.Random(seed)
    for i in range(n):
        phone = f"+90 5{rng.randrange(30, 60)} {rng.randrange(1000000):07d}"
        contact = {"email": f"user{seed}.{i}@example.com", "phone": phone}
        yield i, {k: v for k, v in contact.items() if {"email": with_email, "phone": with_phone}[k]}
