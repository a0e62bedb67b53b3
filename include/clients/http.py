"""The HTTP mechanics every vendor client shares: base URL, Basic auth, timeouts, pacing and
retries.

Every vendor call goes through `VendorClient.call` or `VendorClient.download`, which
- spend one slot of the project's budget per request (`include/clients/budget.py`: at most so
  many at once, starts spaced to the hourly budget, e.g. 60 queries/hour → one every 60 s),
- retry 429 (honouring Retry-After), 5xx, connection resets, timeouts and truncated bodies with
  exponential backoff (tenacity), and give up with a VendorError after `max_attempts`,
- turn any other 4xx into an HTTPStatusError (a VendorError) right away,
- never put credentials or pre-signed URLs' query strings in logs or error messages.

VendorError is the clients' own: whoever reads a source or sends a message decides what a
failed call means there (sources raise SourceError, Send Message marks the batch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from include.clients.budget import ProjectBudget
from include.clients.connection import ConnectionInfo

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)


class VendorError(RuntimeError):
    """A vendor call failed for good: refused, given up on after retries, or unusable."""


class UnexpectedAnswer(VendorError):
    """The vendor answered, but not in the shape its API documents."""


class TransientHTTPError(Exception):
    """Worth retrying: 429, 5xx (`answered`: the vendor refused, so it did not act), or a body
    cut short (not `answered`: it may have acted)."""

    def __init__(
        self, message: str, retry_after: float | None = None, *, answered: bool = True
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.answered = answered


class AmbiguousOutcome(VendorError):
    """A non-idempotent call may or may not have been carried out (timeout or reset after the
    request left, or a reply cut short): it must not be repeated blindly."""


class HTTPStatusError(VendorError):
    """A 4xx other than 429: retrying the same request will not help."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ClientSettings:
    """Tunables from the Connection's extras (defaults suit the real vendors)."""

    timeout: float = 60.0
    max_attempts: int = 6
    backoff_base: float = 2.0
    backoff_max: float = 300.0

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> ClientSettings:
        def number(key: str, default: float | None) -> float | None:
            value = extra.get(key, default)
            return None if value is None else float(value)

        return cls(
            timeout=number("timeout", cls.timeout),
            max_attempts=int(extra.get("max_attempts", cls.max_attempts)),
            backoff_base=number("backoff_base", cls.backoff_base),
            backoff_max=number("backoff_max", cls.backoff_max),
        )

    @property
    def lease_seconds(self) -> float:
        """How long a budget slot outlives a holder that died: a request's timeout and then some."""
        return self.timeout + 30.0


def base_url(conn: ConnectionInfo, default: str) -> str:
    """The Connection's host as a base URL: a full URL, or host (+ port, https by default)."""
    host = (conn.host or "").rstrip("/")
    if not host:
        return default
    if "://" in host:
        return host
    scheme = conn.schema or "https"
    return f"{scheme}://{host}{f':{conn.port}' if conn.port else ''}"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def _where(url: str) -> str:
    """Host, port and path only: a pre-signed URL's query string is a credential, and so is
    any user:password in the URL's authority."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname or ''}{port}{parts.path}"


_QUERY = re.compile(r"\?[^\s'\"),]+")


class VendorClient:
    def __init__(
        self,
        vendor: str,
        conn: ConnectionInfo,
        default_url: str,
        settings: ClientSettings,
        budget: ProjectBudget,
    ) -> None:
        import requests

        self.vendor = vendor
        self.base_url = base_url(conn, default_url)
        self.settings = settings
        self.session = requests.Session()
        if conn.login or conn.password:
            self.session.auth = (conn.login or "", conn.password or "")
        self.budget = budget

    # -- public -------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool = True,
        before_attempt: Callable[[], None] | None = None,
        after_refusal: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """A request whose answer is JSON; returns it parsed (the status code is in `.status`).

        A non-idempotent call (a send) is retried only when the vendor surely did not act on
        it: 429/5xx answers and connections that never opened. Anything else raises
        AmbiguousOutcome. `before_attempt` runs before each try and `after_refusal` after each
        try the vendor surely did not act on, so a ledger can tell "in flight" from "not sent"
        while the client waits to retry.
        """

        def attempt():
            if before_attempt:
                before_attempt()
            return self._json(method, path, **kwargs)

        return self._with_retries(attempt, path, idempotent=idempotent, after_refusal=after_refusal)

    def download(self, url_or_path: str, destination: Path, *, auth: bool = True) -> str | None:
        """Stream a file to `destination`. Returns a redirect's Location instead of following
        it, so the caller decides (a pre-signed link must not get our credentials)."""
        return self._with_retries(
            lambda: self._download(url_or_path, destination, auth), _where(url_or_path)
        )

    # -- internals ----------------------------------------------------------------------------

    def _url(self, url_or_path: str) -> str:
        if "://" in url_or_path:
            return url_or_path
        return f"{self.base_url}/{url_or_path.lstrip('/')}"

    def _send(self, method: str, url_or_path: str, *, auth: bool = True, **kwargs: Any):
        import requests

        url = self._url(url_or_path)
        kwargs.setdefault("timeout", self.settings.timeout)
        if auth:
            response = self.session.request(method, url, **kwargs)
        else:  # a fresh request without the session's Authorization
            response = requests.request(method, url, **kwargs)
        if response.status_code == 429 or response.status_code >= 500:
            response.close()
            raise TransientHTTPError(
                f"HTTP {response.status_code} from {_where(url)}",
                _retry_after(response),
                # A gateway's 502/504 may hide a request the vendor did carry out.
                answered=response.status_code not in (502, 504),
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.budget.slot():
            response = self._send(method, path, **kwargs)
            if response.status_code >= 400:
                self._refuse(response)
            try:
                payload = response.json()
            except ValueError as exc:  # a body cut short, or HTML from a proxy
                raise TransientHTTPError(
                    f"unreadable JSON from {_where(response.url)}", answered=False
                ) from exc
        return _Answer(payload, response.status_code)

    def _download(self, url_or_path: str, destination: Path, auth: bool) -> str | None:
        # A link without our credentials (a pre-signed one) is on the vendor's storage, outside
        # the API's budget.
        with self.budget.slot() if auth else contextlib.nullcontext() as lease:
            response = self._send("GET", url_or_path, auth=auth, stream=True, allow_redirects=False)
            with response:
                if response.is_redirect:
                    return response.headers["Location"]
                if response.status_code >= 400:
                    self._refuse(response)
                expected = response.headers.get("Content-Length")
                partial = destination.with_suffix(destination.suffix + ".partial")
                written = 0
                with partial.open("wb") as handle:
                    for chunk in response.raw.stream(1 << 20, decode_content=False):
                        handle.write(chunk)
                        written += len(chunk)
                        if lease is not None:
                            lease.renew()
        if expected is not None and written != int(expected):
            raise TransientHTTPError(
                f"download from {_where(url_or_path)} cut short: {written} of {expected} bytes",
                answered=False,
            )
        partial.replace(destination)
        return None

    def _refuse(self, response: requests.Response) -> None:
        body = response.text[:500]
        response.close()
        raise HTTPStatusError(
            f"{self.vendor}: HTTP {response.status_code} from {_where(response.url)}: "
            f"{_summary(body)}",
            response.status_code,
            body,
        )

    def _with_retries(
        self,
        attempt,
        what: str,
        idempotent: bool = True,
        after_refusal: Callable[[], None] | None = None,
    ) -> Any:
        import requests
        import tenacity
        import urllib3

        retryable = (
            TransientHTTPError,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
        )
        if not idempotent:
            attempt = _refuse_ambiguity(attempt, what)
            retryable = (TransientHTTPError, requests.exceptions.ConnectTimeout, _NotConnected)
        settings = self.settings

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception()
            hinted = getattr(exc, "retry_after", None)
            if hinted is not None:
                return min(hinted, settings.backoff_max)
            backoff = settings.backoff_base * 2 ** (state.attempt_number - 1)
            return min(backoff, settings.backoff_max) * random.uniform(0.5, 1.0)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if after_refusal:
                after_refusal()
            log.warning(
                "%s: %s on %s; retry %d/%d in %.1f s",
                self.vendor,
                _describe(state.outcome.exception()),
                what,
                state.attempt_number,
                settings.max_attempts - 1,
                state.next_action.sleep,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(retryable),
            stop=tenacity.stop_after_attempt(settings.max_attempts),
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except retryable as exc:
            if after_refusal:
                after_refusal()
            raise VendorError(
                f"{self.vendor}: gave up on {what} after {settings.max_attempts} attempts: "
                f"{_describe(exc)}"
            ) from None


class _NotConnected(Exception):
    """The connection never opened: the vendor cannot have acted on the request."""


def _refuse_ambiguity(attempt, what: str):
    """Wrap a call so that failures after the request may have left become AmbiguousOutcome."""
    import requests

    def guarded():
        try:
            return attempt()
        except TransientHTTPError as exc:
            if exc.answered:
                raise  # the vendor answered 429/5xx: it did not act, a retry is safe
            raise AmbiguousOutcome(f"{what}: {exc}") from None
        except requests.exceptions.ConnectTimeout:
            raise
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                raise _NotConnected(str(exc)) from None
            raise AmbiguousOutcome(f"{what}: {_describe(exc)}") from None
        except (requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise AmbiguousOutcome(f"{what}: {_describe(exc)}") from None

    return guarded


def _never_connected(exc: BaseException) -> bool:
    import urllib3

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


@dataclass(frozen=True)
class _Answer:
    data: Any
    status: int


def _describe(exc: BaseException | None) -> str:
    """The error's kind and message, without URLs' query strings (requests puts them in)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, TransientHTTPError):
        return str(exc)
    # requests quotes URLs with and without a scheme ("...with url: /file.csv?X-Amz-...").
    text = _QUERY.sub("?…", str(exc))
    return f"{type(exc).__name__}: {text[:300]}"


def _summary(body: str) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body[:200]
    if isinstance(payload, dict):
        return str(payload.get("error") or payload.get("message") or payload)[:200]
    return str(payload)[:200]
