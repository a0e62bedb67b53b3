"""A local SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it accepts.

`refuse_next(n)` answers the next n messages' DATA with `554` (a relay that refuses mail);
`stop()` leaves the port closed, so clients get "connection refused" (a server that is down).
"""

from __future__ import annotations

import email
import email.header
import socket
import threading
from dataclasses import dataclass
from email.message import Message
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: Message

    @property
    def subject(self) -> str:
        return str(email.header.make_header(email.header.decode_header(self.message["Subject"])))

    @property
    def html(self) -> str:
        parts = [p for p in self.message.walk() if p.get_content_type() == "text/html"]
        return "".join(p.get_payload(decode=True).decode(p.get_content_charset()) for p in parts)


class FakeSmtp:
    def __init__(self) -> None:
        self.messages: list[Mail] = []
        self.refused = 0  # messages answered 554
        self._refuse = 0
        self._lock = threading.Lock()
        self._controller = None

    def start(self) -> Self:
        from aiosmtpd.controller import Controller

        with socket.socket() as sock:  # aiosmtpd checks it is up on the port it was given
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def refuse_next(self, times: int = 1) -> None:
        with self._lock:
            self._refuse += times

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            if self._refuse:
                self._refuse -= 1
                self.refused += 1
                return "554 5.7.1 Message refused by the test server"
            self.messages.append(
                Mail(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=email.message_from_bytes(envelope.original_content),
                )
            )
        return "250 OK"
