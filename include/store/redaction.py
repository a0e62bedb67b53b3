"""Personal data out of error texts before they are written to a run record (and from there
to the UI and the logs): drivers and libraries quote the values they choke on."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[^\s@'\"(),;:<>]+@[^\s@'\"(),;:<>]+\.[A-Za-z]{2,}")
# International numbers and long digit runs; dates, IPs and ports stay readable for on-call.
_PHONE = re.compile(r"\+\d[\d ()-]{7,}\d|\b\d{10,}\b")
MAX_ERROR = 4000


def redact_personal_data(text: str) -> str:
    """Emails and phone-like digit runs replaced by `<email>` and `<number>`."""
    return _PHONE.sub("<number>", _EMAIL.sub("<email>", text))
