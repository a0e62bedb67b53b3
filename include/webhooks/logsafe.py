"""Text from outside (a caller, a driver's error message) made safe for one log line or a note.

A log line is one record: a newline, a carriage return or an ANSI escape in a caller's string
would let it forge lines or hide them, so such text is escaped (`\\n`, `\\x1b`...), never
written raw. Printable text (non-ASCII letters included) is kept as it is, to stay readable.
"""

from __future__ import annotations

LIMIT = 300


def loggable(text: object, limit: int = LIMIT) -> str:
    """`text` cut to `limit` characters; escaped unless every character is printable."""
    text = str(text)[:limit]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def first_line(text: object, limit: int = LIMIT) -> str:
    """The first line of an error message (the cause; what follows may quote data), loggable."""
    return loggable((str(text).splitlines() or [""])[0], limit)
