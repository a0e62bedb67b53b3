"""A fake Amplitude Behavioral Cohorts API plus the S3-like host its pre-signed links point to.

Plays /work/shared/reference/external-apis.md ("Amplitude - behavioral cohort download"):
request a cohort, poll the job, download the file in the body or through a 302 to a short-lived
link on another origin. The storage host rejects any Authorization header, so a test fails if a
client forwards API credentials there. Faults and auth come from `FakeServer`.
"""

from __future__ import annotations

import csv
import gzip as gzip_lib
import io
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlencode

from include.demo.fake_server import FakeServer, Recorded, Response, json_response

FIXED_COLUMNS = ("amplitude_id", "user_id")
S3_CODES = {400: "InvalidArgument", 403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError"}


@dataclass(frozen=True)
class _Link:
    path: str
    data: bytes
    content_type: str
    expires_at: float  # time.monotonic()


class FakeStorage(FakeServer):
    """S3 stand-in: serves what `sign` registered until the link expires; no auth of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._links: dict[str, _Link] = {}
        self._state = threading.Lock()

    def sign(self, path: str, data: bytes, content_type: str, ttl: float) -> str:
        """Register `data` at `path` and return a pre-signed URL valid for `ttl` seconds."""
        signature = secrets.token_hex(32)
        with self._state:
            self._links[signature] = _Link(path, data, content_type, time.monotonic() + ttl)
        query = urlencode(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                "X-Amz-Expires": str(max(int(ttl), 0)),
                "X-Amz-SignedHeaders": "host",
                "X-Amz-Signature": signature,
            }
        )
        return f"{self.base_url}{path}?{query}"

    def error_response(self, status: int, message: str, code: str | None = None) -> Response:
        code = code or S3_CODES.get(status, "ServiceUnavailable" if status >= 500 else "SlowDown")
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return Response(status, body.encode(), {"Content-Type": "application/xml"})

    def authorize(self, authorization: str | None) -> Response | None:
        if authorization is None:
            return None
        return self.error_response(
            400,
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
        )

    def route(self, req: Recorded) -> Response:
        with self._state:
            link = self._links.get(req.query.get("X-Amz-Signature", [""])[-1])
        if req.method not in ("GET", "HEAD") or link is None or link.path != req.path:
            return self.error_response(
                403, "The request signature we calculated does not match", "SignatureDoesNotMatch"
            )
        if time.monotonic() >= link.expires_at:
            return self.error_response(403, "Request has expired")
        return Response(200, link.data, {"Content-Type": link.content_type})


@dataclass
class AmplitudeCohort:
    id: str
    name: str
    rows: list[dict[str, Any]]
    gzip: bool = False
    mode: Literal["body", "redirect"] = "body"
    content_type: str | None = None  # None: application/gzip or text/csv
    size: int | None = None  # None: len(rows)
    archived: bool = False
    last_computed: int = 1_790_000_000_000  # epoch milliseconds


@dataclass
class _Job:
    cohort_id: str
    file: bytes  # snapshot at request time, compressed if the cohort is
    polls: int = 0
    fails: bool = False


class FakeAmplitude(FakeServer):
    """The API host (Basic `api_key:secret_key`); `storage` is started and stopped with it."""

    realm = "Amplitude"
    LIST: ClassVar[str] = "/api/3/cohorts"  # fault/requests_to patterns
    REQUEST: ClassVar[str] = "/api/5/cohorts/request/*"
    STATUS: ClassVar[str] = "/api/5/cohorts/request-status/*"
    FILE: ClassVar[str] = "/api/5/cohorts/request/*/file"

    def __init__(
        self,
        api_key: str = "amp-key",
        secret_key: str = "amp-secret",
        polls_before_ready: int = 2,
        prop_column_style: Literal["plain", "gp"] = "plain",
        link_ttl: float = 60.0,
    ) -> None:
        super().__init__(api_key, secret_key)
        self.polls_before_ready = polls_before_ready
        self.prop_column_style = prop_column_style
        self.link_ttl = link_ttl
        self.storage = FakeStorage()
        self.cohorts: dict[str, AmplitudeCohort] = {}
        self.jobs: dict[str, _Job] = {}
        self._expire_links = 0
        self._fail_jobs = 0
        self._state = threading.Lock()

    def start(self) -> Self:
        self.storage.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.storage.stop()

    def add_cohort(
        self,
        cohort_id: str,
        name: str,
        rows: list[dict[str, Any]],
        gzip: bool = False,
        mode: Literal["body", "redirect"] = "body",
        **extra: Any,
    ) -> AmplitudeCohort:
        """Add or replace a cohort; rows hold amplitude_id, user_id and property values.

        `extra`: content_type, size, archived, last_computed.
        """
        cohort = AmplitudeCohort(cohort_id, name, list(rows), gzip, mode, **extra)
        self.cohorts[cohort_id] = cohort
        return cohort

    def expire_next_links(self, n: int = 1) -> None:
        """The next `n` pre-signed links are issued already expired (storage answers 403)."""
        with self._state:
            self._expire_links += n

    def fail_next_jobs(self, n: int = 1) -> None:
        """The next `n` requested jobs end "JOB FAILED" instead of completing."""
        with self._state:
            self._fail_jobs += n

    def _countdown(self, name: str) -> bool:
        """Use up one of a `*_next_*` switch; the caller holds `_state`."""
        left = getattr(self, name)
        setattr(self, name, max(left - 1, 0))
        return left > 0

    def route(self, req: Recorded) -> Response:
        if req.method != "GET":
            return self.error_response(405, "method not allowed")
        if req.path == "/api/3/cohorts":
            return json_response({"cohorts": [self._describe(c) for c in self.cohorts.values()]})
        if match := re.fullmatch(r"/api/5/cohorts/request/([^/]+)/file", req.path):
            return self._file(match[1])
        if match := re.fullmatch(r"/api/5/cohorts/request-status/([^/]+)", req.path):
            return self._status(match[1])
        if match := re.fullmatch(r"/api/5/cohorts/request/([^/]+)", req.path):
            return self._request(match[1], req)
        return self.error_response(404, f"unknown path {req.path}")

    @staticmethod
    def _describe(cohort: AmplitudeCohort) -> dict[str, Any]:
        return {
            "id": cohort.id,
            "name": cohort.name,
            "description": "",
            "size": len(cohort.rows) if cohort.size is None else cohort.size,
            "archived": cohort.archived,
            "lastComputed": cohort.last_computed,
            "lastMod": cohort.last_computed // 1000,
            "type": "redshift",
            "published": True,
        }

    def _request(self, cohort_id: str, req: Recorded) -> Response:
        cohort = self.cohorts.get(cohort_id)
        if cohort is None:
            return self.error_response(404, f"cohort {cohort_id} not found")
        keys: list[str] | None = None
        if req.query.get("props", ["0"])[-1] in ("1", "true"):
            given = [k.strip() for v in req.query.get("propKeys", []) for k in v.split(",")]
            keys = list(dict.fromkeys(k for k in given if k)) or None
            keys = keys or list(dict.fromkeys(k for r in cohort.rows for k in r))
            keys = [k for k in keys if k not in FIXED_COLUMNS]
        data = self._csv(cohort.rows, keys or [])
        request_id = secrets.token_hex(12)
        with self._state:
            fails = self._countdown("_fail_jobs")
            payload = gzip_lib.compress(data, mtime=0) if cohort.gzip else data
            self.jobs[request_id] = _Job(cohort_id, payload, fails=fails)
        return json_response({"request_id": request_id, "cohort_id": cohort_id}, 202)

    def _csv(self, rows: list[dict[str, Any]], keys: list[str]) -> bytes:
        prefix = "gp:" if self.prop_column_style == "gp" else ""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*FIXED_COLUMNS, *(prefix + k for k in keys)])
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row[k] for k in (*FIXED_COLUMNS, *keys)])
        return out.getvalue().encode()

    def _status(self, request_id: str) -> Response:
        with self._state:
            job = self.jobs.get(request_id)
            if job is None:
                return self.error_response(404, f"request {request_id} not found")
            job.polls += 1
            polls = job.polls
        body = {"request_id": request_id, "cohort_id": job.cohort_id}
        if polls <= self.polls_before_ready:
            return json_response({**body, "async_status": "JOB INPROGRESS"}, 202)
        return json_response(
            {**body, "async_status": "JOB FAILED" if job.fails else "JOB COMPLETED"}
        )

    def _file(self, request_id: str) -> Response:
        job = self.jobs.get(request_id)
        if job is None:
            return self.error_response(404, f"request {request_id} not found")
        if job.fails or job.polls <= self.polls_before_ready:
            return self.error_response(400, f"request {request_id} has not completed")
        cohort = self.cohorts[job.cohort_id]
        content_type = cohort.content_type or ("application/gzip" if cohort.gzip else "text/csv")
        if cohort.mode == "body":
            return Response(200, job.file, {"Content-Type": content_type})
        with self._state:
            expired = self._countdown("_expire_links")
        suffix = ".csv.gz" if cohort.gzip else ".csv"
        url = self.storage.sign(
            f"/amplitude-cohorts/{request_id}{suffix}",
            job.file,
            content_type,
            -1.0 if expired else self.link_ttl,
        )
        return Response(302, b"", {"Location": url})
