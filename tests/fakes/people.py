"""Deterministic test audiences for the Mixpanel and Amplitude fakes (`include.demo.fake_mixpanel`,
`include.demo.fake_amplitude`): the same people, in each vendor's shape."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any


def fake_people(
    n: int, seed: int = 0, with_email: bool = True, with_phone: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """Deterministic (index, {"email", "phone"}) pairs behind both fakes' member generators."""
    rng = random.Random(seed)
    for i in range(n):
        phone = f"+90 5{rng.randrange(30, 60)} {rng.randrange(1000000):07d}"
        contact = {"email": f"user{seed}.{i}@example.com", "phone": phone}
        yield i, {k: v for k, v in contact.items() if {"email": with_email, "phone": with_phone}[k]}


def make_members(
    n: int, with_email: bool = True, with_phone: bool = True, seed: int = 0
) -> list[dict[str, Any]]:
    """`n` deterministic Mixpanel members; distinct ids are strings with a leading zero."""
    members = []
    for i, contact in fake_people(n, seed, with_email, with_phone):
        props: dict[str, Any] = {"$name": f"User {seed}.{i}", "plan": "pro" if i % 3 else "free"}
        props.update({f"${key}": value for key, value in contact.items()})
        members.append({"$distinct_id": f"0{seed}-{i:07d}", "$properties": props})
    return members


def make_rows(
    n: int, with_email: bool = True, with_phone: bool = True, seed: int = 0
) -> list[dict[str, Any]]:
    """`n` deterministic cohort rows; every fifth has no user_id, as anonymous users do."""
    return [
        {
            "amplitude_id": 100_000_000 + seed * 1_000_000 + i,
            "user_id": None if i % 5 == 4 else f"0{seed}-{i:07d}",
            **contact,
        }
        for i, contact in fake_people(n, seed, with_email, with_phone)
    ]
