"""S3 for tests: moto in server mode (`ThreadedMotoServer`) on 127.0.0.1 and a free port, a
real HTTP S3 that the product reaches through its Airflow Connection (`endpoint_url` in the
extra), never a patch of boto or requests.

`S3Store` records what each request asked for (method, key, the encryption headers), and can
go down at a chosen request: `down_at("/bucket/prefix/", "/audience.parquet")` stops the server
when a read of such an object arrives (its port closed: every later connection is refused) and
drops that request's connection unanswered, as a store dying under a reader. `start()` brings
it back on the same port with its objects (moto keeps them in this process).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from moto.server import ThreadedMotoServer

REGION = "us-east-1"
SSE_HEADER = "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION"
KMS_HEADER = "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_AWS_KMS_KEY_ID"


@dataclass(frozen=True)
class S3Request:
    method: str
    path: str  # /bucket/key
    query: str
    sse: str | None  # x-amz-server-side-encryption
    kms_key: str | None

    @property
    def is_upload(self) -> bool:
        """A PUT of an object or the start of a multipart upload (what carries SSE)."""
        if self.method == "PUT" and "partNumber" not in self.query:
            return self.path.count("/") >= 2
        return self.method == "POST" and self.query.startswith("uploads")


class S3Store:
    def __init__(self, login: str, secret: str, port: int | None = None) -> None:
        from tests.conftest import free_port

        self.login, self.secret = login, secret
        self.port = port or free_port()
        self.requests: list[S3Request] = []
        self.went_down = threading.Event()
        self._down_at: tuple[tuple[str, ...], str, str] | None = None
        self._server: ThreadedMotoServer | None = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, **config) -> str:
        """`AIRFLOW_CONN_<ID>` for this store: an `aws` Connection, its keys as login and
        password, the endpoint and region in its extra (and botocore `config` there)."""
        extra = {"endpoint_url": self.endpoint, "region_name": REGION}
        if config:
            extra["config_kwargs"] = config
        return json.dumps(
            {"conn_type": "aws", "login": self.login, "password": self.secret, "extra": extra}
        )

    def client(self, service: str = "s3"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.login,
            aws_secret_access_key=self.secret,
            region_name=REGION,
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, and every unfinished multipart upload's key."""
        s3 = self.client()
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        return sorted([o["Key"] for o in listed] + [f"(upload) {u['Key']}" for u in uploads])

    def start(self) -> S3Store:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self.went_down.clear()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wsgi = self._server._server  # werkzeug's server: serves `.app`
        moto_app = wsgi.app
        wsgi.app = lambda environ, start_response: self._serve(moto_app, environ, start_response)
        return self

    def stop(self) -> None:
        """Stop serving and close the port (a stopped store refuses connections)."""
        with self._lock:
            if self._server is None:
                return
            server, self._server = self._server, None
        server.stop()
        server._server.server_close()
        self.went_down.set()

    def down_at(self, under: str, name: str, methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
        """Go down when the next read (`methods`) of an object under `under` (`/bucket/key
        prefix`) whose key ends in `name` comes."""
        self._down_at = (methods, under, name)

    def uploads(self) -> list[S3Request]:
        return [r for r in self.requests if r.is_upload]

    def __enter__(self) -> S3Store:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, app, environ, start_response):
        path = unquote(environ.get("PATH_INFO", ""))
        request = S3Request(
            environ["REQUEST_METHOD"],
            path,
            environ.get("QUERY_STRING", ""),
            environ.get(SSE_HEADER),
            environ.get(KMS_HEADER),
        )
        self.requests.append(request)
        trigger = self._down_at
        if (
            trigger
            and request.method in trigger[0]
            and path.startswith(trigger[1])
            and (path.endswith(trigger[2]))
        ):
            self._down_at = None
            self.stop()
            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)  # no answer, ever
            start_response("503 Service Unavailable", [])
            return [b""]
        return app(environ, start_response)


def bucket_of(url: str) -> tuple[str, str]:
    """(bucket, key prefix) of `s3://conn@bucket/prefix`."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2], parts.path.strip("/")


LOGIN = "AKIATESTSTAGING0001"  # the test Connection's keys: no log, error or record may hold them
SECRET = "staging-secret-Zq9xT4"
_SHARED: S3Store | None = None


def shared_store() -> S3Store:
    """One store for the whole test process, started on first use. Airflow caches a
    filesystem per Connection id for the life of the process (`attach`), so every test that
    stages through the `aws_staging` Connection must find the same endpoint behind it."""
    global _SHARED
    if _SHARED is None:
        _SHARED = S3Store(LOGIN, SECRET).start()
    elif _SHARED._server is None:
        _SHARED.start()  # a test stopped it: back, with its objects
    return _SHARED
