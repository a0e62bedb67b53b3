"""A fake Netmera REST API (`/rest/3.0/<operation>`): tags, bulk and per-user pushes, push stats.

Plays /work/shared/reference/external-apis.md ("Netmera REST API"). Auth is the
``X-netmera-api-key`` header (redacted in `Recorded.headers`); errors are
``{"error": str, "code": int}``. Every delivery is kept, duplicates included, so tests can
assert that a client sends each user exactly once. The tests use it through `tests.fakes`; the
demo's sandbox (`include.demo.sandbox`) is this fake with its state kept in a file
(`state` / `load_state`).

Faults: the base kinds of `include.demo.fake_server` plus Netmera's own, all through `fail_next`:

- ``"invalid_key"`` -> 403 code 2010, ``"ip"`` -> 403 code 2021, ``"quota"`` -> 400 code 5022.
- ``"429"``/``"500"``/``"503"``/... -> that status; any 5xx body is
  ``{"error": "Internal error", "code": 2001}``.

Which faults still act on the request (record tags/definitions/deliveries):

- Rejected, nothing recorded: every error status (auth, validation, injected statuses, the
  Netmera kinds above) and ``"drop"``.
- Processed: ``"slow"`` processes the request AT ONCE and then holds the reply for ``delay``
  seconds (here unlike the base ``"slow"``, which waits first), so a client that times out and
  blindly retries has sent twice by the time its retry returns; ``"truncated"`` processes,
  then cuts the reply short.

Use `FakeNetmera.fail_next` (or push a `NetmeraFault`): a plain `Fault` rejects the Netmera
kinds, and a plain ``Fault("slow")`` keeps the base wait-then-process behaviour.
"""

from __future__ import annotations

import json
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from include.demo.fake_server import (
    FakeServer,
    Fault,
    FaultQueue,
    Recorded,
    Response,
    json_response,
)

API_KEY_HEADER = "X-netmera-api-key"
PREFIX = "/rest/3.0/"
PLATFORMS = ("IOS", "ANDROID")
# kind -> (status, error, code); answered before the request is processed
NETMERA_FAULTS = {
    "invalid_key": (403, "Invalid API key", 2010),
    "ip": (403, "IP not allowed", 2021),
    "quota": (400, "Quota exceeded", 5022),
}
_LATE = "late"  # what fail_next("slow") queues: process, then answer `delay` seconds late
_STATUS_CODES = {400: 2020, 403: 2010}  # default Netmera code of an error status
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class NetmeraFault(Fault):
    """A `Fault` that may also be one of `NETMERA_FAULTS`."""

    def __post_init__(self) -> None:
        kind = self.kind
        if kind in NETMERA_FAULTS or kind == _LATE:
            self.kind = "drop"  # borrow the base checks of times/after/path for our own kinds
        try:
            super().__post_init__()
        finally:
            self.kind = kind


class _Faults(FaultQueue):
    """Remembers, per handler thread, the fault taken for the request being routed."""

    def __init__(self) -> None:
        super().__init__()
        self._taken = threading.local()

    def take(self, path: str) -> Fault | None:
        fault = super().take(path)
        self._taken.fault = fault
        return fault

    def taken(self) -> Fault | None:
        return getattr(self._taken, "fault", None)


class _Invalid(Exception):
    def __init__(self, message: str, code: int = 2020, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


@dataclass(frozen=True)
class Delivery:
    notification_key: int
    ext_id: str
    params: dict[str, Any] = field(default_factory=dict)


def push_outcome(
    ext_id: str, platforms: tuple[str, ...] | list[str] = PLATFORMS
) -> tuple[str, bool, bool]:
    """(platform, failed, clicked) of one delivery: a stable hash, ~5% failed, ~25% clicked.

    getPushStats counts each delivery (duplicates too) once: as `failed`, else as `sent`.
    """
    h = zlib.crc32(ext_id.encode())
    failed = (h >> 8) % 20 == 0
    return platforms[h % len(platforms)], failed, not failed and (h >> 16) % 4 == 0


class FakeNetmera(FakeServer):
    """Netmera REST API 3.0; getPushStats answers SENDING `sending_polls` times per key."""

    realm = "Netmera"
    # fault/requests_to patterns
    TAG: ClassVar[str] = PREFIX + "tagUsers"
    UNTAG: ClassVar[str] = PREFIX + "untagUsers"
    BULK: ClassVar[str] = PREFIX + "sendBulkNotification"
    DEFINE: ClassVar[str] = PREFIX + "createNotificationDefinition"
    SEND: ClassVar[str] = PREFIX + "sendNotification"
    STATS: ClassVar[str] = PREFIX + "getPushStats"

    def __init__(
        self,
        api_key: str = "netmera-key",
        max_ids: int = 1000,
        first_key: int = 1,
        sending_polls: int = 0,
    ) -> None:
        super().__init__(secret=api_key)
        self.faults = _Faults()
        self.max_ids = max_ids
        self.sending_polls = sending_polls
        self._next_key = first_key
        self._tags: dict[str, set[str]] = {}
        self._definitions: dict[int, dict[str, Any]] = {}
        self._deliveries: list[Delivery] = []
        self._polls: dict[int, int] = {}
        self._state = threading.Lock()
        self._operations = {
            "tagUsers": ("POST", self._tag),
            "untagUsers": ("POST", self._untag),
            "sendBulkNotification": ("POST", self._bulk),
            "createNotificationDefinition": ("POST", self._define),
            "sendNotification": ("POST", self._send_notification),
            "getPushStats": ("GET", self._stats),
        }

    # --- introspection ---------------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every delivery in order (key, extId, params), duplicates included."""
        with self._state:
            return list(self._deliveries)

    def delivered(self, notification_key: int | None = None) -> list[str]:
        """extIds delivered (for one key, or all), in order, duplicates included."""
        return [
            d.ext_id
            for d in self.deliveries
            if notification_key is None or d.notification_key == notification_key
        ]

    @property
    def deliveries_by_key(self) -> dict[int, list[str]]:
        by_key: dict[int, list[str]] = {}
        for d in self.deliveries:
            by_key.setdefault(d.notification_key, []).append(d.ext_id)
        return by_key

    @property
    def definitions(self) -> dict[int, dict[str, Any]]:
        """notificationKey -> message (title, text, platforms, ...), bulk sends included."""
        with self._state:
            return {key: dict(message) for key, message in self._definitions.items()}

    @property
    def tags(self) -> dict[str, set[str]]:
        """tag -> extIds; a tag whose last user is untagged disappears."""
        with self._state:
            return {tag: set(ids) for tag, ids in self._tags.items()}

    def fail_next(self, kind: str, times: int = 1, **kw: Any) -> Fault:
        """As the base, plus `NETMERA_FAULTS`; ``"slow"`` processes first, then answers late."""
        return self.faults.push(NetmeraFault(_LATE if kind == "slow" else kind, times=times, **kw))

    # --- state (what the demo's sandbox keeps in its file) ---------------------------------

    def dump_state(self) -> dict[str, Any]:
        """What the fake was sent (definitions, deliveries, tags, the next key) as JSON data."""
        with self._state:
            return {
                "next_key": self._next_key,
                "definitions": {str(key): msg for key, msg in self._definitions.items()},
                "deliveries": [[d.notification_key, d.ext_id, d.params] for d in self._deliveries],
                "tags": {tag: sorted(ids) for tag, ids in self._tags.items()},
            }

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back what `dump_state` gave; raises KeyError/TypeError/ValueError if malformed."""
        definitions = {int(key): dict(msg) for key, msg in state["definitions"].items()}
        deliveries = [
            Delivery(int(key), str(ext), dict(params)) for key, ext, params in state["deliveries"]
        ]
        tags = {str(tag): set(map(str, ids)) for tag, ids in state["tags"].items()}
        next_key = int(state["next_key"])
        with self._state:
            self._definitions, self._deliveries, self._tags = definitions, deliveries, tags
            self._next_key = max(next_key, *(key + 1 for key in definitions), 1)
            self._polls.clear()

    # --- FakeServer hooks ------------------------------------------------------------------

    def error_response(self, status: int, message: str, code: int | None = None) -> Response:
        if status >= 500:  # what Netmera says; bugs in the fake itself are in `self.errors`
            message, code = "Internal error", 2001
        code = code if code is not None else _STATUS_CODES.get(status, status)
        return json_response({"error": message, "code": code}, status)

    def _record(self, handler: Any) -> tuple[Recorded, str | None]:
        """Redact the API key before the base records the headers; it is what `authorize` checks."""
        key = handler.headers.get(API_KEY_HEADER)
        if key is not None:
            del handler.headers[API_KEY_HEADER]
            handler.headers[API_KEY_HEADER] = "<redacted>"
        req, _authorization = super()._record(handler)
        return req, key

    def authorize(self, authorization: str | None) -> Response | None:
        """`authorization` is the X-netmera-api-key value here (see `_record`)."""
        if authorization is not None and authorization == self._secret:
            return None
        return self.error_response(403, "Invalid API key", 2010)

    def route(self, req: Recorded) -> Response:
        if req.fault in NETMERA_FAULTS:
            return self.error_response(*NETMERA_FAULTS[req.fault])
        response = self._operate(req)
        fault = self.faults.taken()
        if fault is not None and req.fault == _LATE:
            req.fault = "slow"
            self._stopping.wait(fault.delay)
        return response

    # --- operations ------------------------------------------------------------------------

    def _operate(self, req: Recorded) -> Response:
        operation = self._operations.get(req.path.removeprefix(PREFIX))
        if not req.path.startswith(PREFIX) or operation is None:
            return self.error_response(404, f"unknown operation {req.path}")
        method, handle = operation
        if req.method != method:
            return self.error_response(405, f"{method} only")
        try:
            if method == "GET":
                return handle(req)
            try:
                body = json.loads(req.body)
            except ValueError as exc:
                raise _Invalid(f"Invalid JSON: {exc}", 2009) from exc
            if not isinstance(body, dict):
                raise _Invalid("Invalid JSON: expected an object", 2009)
            return handle(body)
        except _Invalid as exc:
            return self.error_response(exc.status, exc.message, exc.code)

    def _ext_ids(self, value: Any, name: str) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise _Invalid(f"Missing parameter: {name}")
        if not all(isinstance(v, str) and v for v in value):
            raise _Invalid(f"{name} must be non-empty strings")
        unique = list(dict.fromkeys(value))
        if len(unique) > self.max_ids:
            raise _Invalid(f"{name}: at most {self.max_ids} unique values, got {len(unique)}")
        return unique

    @staticmethod
    def _tag_name(body: dict[str, Any]) -> str:
        tag = body.get("tag")
        if not isinstance(tag, str) or not tag:
            raise _Invalid("Missing parameter: tag")
        return tag

    @staticmethod
    def _message(message: Any) -> dict[str, Any]:
        if not isinstance(message, dict) or not (message.get("title") or message.get("text")):
            raise _Invalid("Missing parameter: message (title/text)")
        platforms = message.get("platforms", list(PLATFORMS))
        if (
            not isinstance(platforms, list)
            or not platforms
            or not all(isinstance(p, str) and p.upper() in PLATFORMS for p in platforms)
        ):
            raise _Invalid(f"platforms must be a non-empty subset of {list(PLATFORMS)}")
        return {**message, "platforms": list(dict.fromkeys(p.upper() for p in platforms))}

    def _new_key(self, message: dict[str, Any]) -> int:
        """Register a definition; the caller holds `_state`."""
        key = self._next_key
        self._next_key += 1
        self._definitions[key] = message
        return key

    def _tag(self, body: dict[str, Any]) -> Response:
        tag, ids = self._tag_name(body), self._ext_ids(body.get("extIds"), "extIds")
        with self._state:
            self._tags.setdefault(tag, set()).update(ids)
        return json_response({})

    def _untag(self, body: dict[str, Any]) -> Response:
        tag, ids = self._tag_name(body), self._ext_ids(body.get("extIds"), "extIds")
        with self._state:
            remaining = self._tags.get(tag, set()) - set(ids)
            if remaining:
                self._tags[tag] = remaining
            else:
                self._tags.pop(tag, None)
        return json_response({})

    def _bulk(self, body: dict[str, Any]) -> Response:
        message = self._message(body.get("message"))
        target = body.get("target")
        if not isinstance(target, dict):
            raise _Invalid("Missing parameter: target")
        tag = self._tag_name(target)
        with self._state:
            key = self._new_key(message)
            for ext_id in sorted(self._tags.get(tag, ())):
                self._deliveries.append(Delivery(key, ext_id))
        return json_response({"notificationKey": key})

    def _define(self, body: dict[str, Any]) -> Response:
        message = self._message(body.get("message", body))
        with self._state:
            key = self._new_key(message)
        return json_response({"notificationKey": key})

    def _known_key(self, value: Any) -> int:
        try:
            key = int(value)
        except (TypeError, ValueError):
            raise _Invalid("Missing parameter: notificationKey") from None
        with self._state:
            if key not in self._definitions:
                raise _Invalid(f"Unknown notificationKey {key}")
        return key

    def _send_notification(self, body: dict[str, Any]) -> Response:
        key = self._known_key(body.get("notificationKey"))
        target = body.get("target")
        if not isinstance(target, dict):
            raise _Invalid("Missing parameter: target")
        ids = self._ext_ids(target.get("extId"), "extId")
        message = body.get("message") or {}
        params = (message.get("params") or {}) if isinstance(message, dict) else None
        if not isinstance(params, dict):
            raise _Invalid("message.params must be an object")
        with self._state:
            self._deliveries.extend(Delivery(key, ext_id, dict(params)) for ext_id in ids)
        return json_response({"notificationKey": key})

    def _stats(self, req: Recorded) -> Response:
        key = self._known_key(req.param("notificationKey"))
        with self._state:
            platforms = self._definitions[key]["platforms"]
            ids = [d.ext_id for d in self._deliveries if d.notification_key == key]
            polls = self._polls[key] = self._polls.get(key, 0) + 1
        sending = polls <= self.sending_polls
        if sending:  # a deterministic share of the recipients, growing with each poll
            ids = ids[: len(ids) * polls // (self.sending_polls + 1)]
        counts = {p: {"platform": p, "sent": 0, "failed": 0, "clicked": 0} for p in platforms}
        for ext_id in ids:
            platform, failed, clicked = push_outcome(ext_id, platforms)
            counts[platform]["failed" if failed else "sent"] += 1
            counts[platform]["clicked"] += clicked
        start = _EPOCH + timedelta(minutes=key)
        end = start + timedelta(minutes=5)
        return json_response(
            {
                "notificationKey": key,
                "status": "SENDING" if sending else "FINISHED",
                "startDate": f"{start:%Y-%m-%dT%H:%M:%SZ}",
                "endDate": None if sending else f"{end:%Y-%m-%dT%H:%M:%SZ}",
                "stats": list(counts.values()),
            }
        )
