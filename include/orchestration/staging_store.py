"""Airflow glue: the deployment's staging (`include/staging.py`), from
`CONNECTOR_SEGMENTS_STAGING_DIR`.

- A local folder (a path; the embedded default `.local/staging`): `LocalStaging`.
- An object-store URL in Airflow's `ObjectStoragePath` form, `<scheme>://<conn id>@<bucket>/
  <prefix>`: `ObjectStaging` over the filesystem Airflow builds from that Connection. `s3://`
  (Amazon provider + s3fs; an `aws` Connection: login/password = access key id/secret, or a
  role; `endpoint_url` and `region_name` in its extra for an S3-compatible store), `gs://`
  (Google provider + gcsfs; a `google_cloud_platform` Connection), `abfs://` (Microsoft Azure
  provider + adlfs; an `adls` Connection, the bucket being the container). Without
  `<conn id>@` the filesystem's default credentials (an instance role) are used.

Server-side encryption of S3 uploads: `CONNECTOR_SEGMENTS_STAGING_SSE` = `AES256`, `aws:kms`
or `aws:kms:dsse`, and `CONNECTOR_SEGMENTS_STAGING_KMS_KEY_ID` with `aws:kms*` (the bucket's
default KMS key otherwise). They go with every upload; GCS and Azure encrypt at rest always.

A setting that cannot work fails the step at once (`StagingMisconfigured`, no retry), naming
the variable and the rule. The store is named by its URL without the part before `@`, and
nothing of a Connection but its id is ever logged.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from airflow.sdk.exceptions import AirflowFailException

from include.orchestration.connections import ConnectionNotDefined, get_connection
from include.staging import (
    STAGING_DIR_ENV,
    LocalStaging,
    ObjectStaging,
    Staging,
    StagingError,
    staging_root,
)

log = logging.getLogger(__name__)

SSE_ENV = "CONNECTOR_SEGMENTS_STAGING_SSE"
KMS_KEY_ENV = "CONNECTOR_SEGMENTS_STAGING_KMS_KEY_ID"
SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
S3_SCHEMES = ("s3", "s3a", "s3n")
_NEEDS = (
    "s3:// needs apache-airflow-providers-amazon and s3fs, gs:// apache-airflow-providers-google "
    "and gcsfs, abfs:// apache-airflow-providers-microsoft-azure and adlfs"
)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


class StagingMisconfigured(AirflowFailException, ValueError):
    """The staging settings cannot work. An AirflowFailException: no retry can fix them."""


def staging() -> Staging:
    """Where this deployment's runs stage their files."""
    value = os.environ.get(STAGING_DIR_ENV, "").strip()
    if "://" not in value or value.lower().startswith("file://"):
        if any(_encryption_settings()):
            raise StagingMisconfigured(
                f"{SSE_ENV} and {KMS_KEY_ENV} apply to staging in S3 only; {STAGING_DIR_ENV} "
                "is a local folder"
            )
        folder = urlsplit(value).path if value.lower().startswith("file://") else value
        return LocalStaging(Path(folder) if folder else staging_root())
    return _object_staging(value)


def _object_staging(url: str) -> ObjectStaging:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    conn_id, at, bucket = parts.netloc.rpartition("@")
    shown = f"{scheme}://{bucket}{parts.path}".rstrip("/")  # never the part before '@'
    where = f"{STAGING_DIR_ENV} ({shown})"
    if at and (not conn_id or not re.fullmatch(r"[A-Za-z0-9_.-]+", conn_id)):
        raise StagingMisconfigured(
            f"{where}: the part before '@' must be an Airflow Connection id; credentials "
            "belong in that Connection, never in the URL"
        )
    if parts.query or parts.fragment:
        raise StagingMisconfigured(
            f"{where}: a query string or fragment is not allowed (credentials such as SAS "
            "tokens belong in the Connection)"
        )
    if not bucket:
        raise StagingMisconfigured(f"{where}: names no bucket (<scheme>://<conn id>@<bucket>/...)")
    if not _BUCKET.fullmatch(bucket):
        raise StagingMisconfigured(f"{where}: {bucket!r} is not a bucket or container name")
    if not parts.path.strip("/"):
        # Runs are removed by prefix (<prefix>/<segment id>/...): at the bucket's root a
        # segment named like another application's folder would lose that folder's objects.
        raise StagingMisconfigured(
            f"{where}: names no prefix inside the bucket (<scheme>://<conn id>@<bucket>/<prefix>)"
        )
    options = _upload_options(scheme, where)
    from airflow.sdk.io import has_fs

    if not has_fs(scheme):
        raise StagingMisconfigured(f"{where}: no filesystem for {scheme}:// here ({_NEEDS})")
    if conn_id:
        try:
            get_connection(conn_id)
        except ConnectionNotDefined:
            raise StagingMisconfigured(
                f"{where}: Airflow Connection {conn_id!r} is not defined"
            ) from None
    description = f"{shown} (Airflow Connection {conn_id!r})" if conn_id else shown
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(url)
    try:
        fs = path.fs
    except ImportError as exc:
        raise StagingMisconfigured(f"{where}: {exc} ({_NEEDS})") from None
    except Exception as exc:
        raise StagingError(
            f"staging store {description}: cannot be opened: {type(exc).__name__}: {exc}"
        ) from exc
    log.info(
        "staging in %s%s",
        description,
        f", uploads encrypted with {options['ServerSideEncryption']}" if options else "",
    )
    return ObjectStaging(fs, path.path, shown, options, description)


def _encryption_settings() -> tuple[str, str]:
    """`CONNECTOR_SEGMENTS_STAGING_SSE` and `..._KMS_KEY_ID` ('' when unset)."""
    return os.environ.get(SSE_ENV, "").strip(), os.environ.get(KMS_KEY_ENV, "").strip()


def _upload_options(scheme: str, where: str) -> dict[str, str]:
    """S3's server-side encryption for every upload, from the two variables."""
    sse, key = _encryption_settings()
    if not sse and not key:
        return {}
    if scheme not in S3_SCHEMES:
        raise StagingMisconfigured(
            f"{SSE_ENV} and {KMS_KEY_ENV} apply to S3 only, not to {where}: GCS and Azure "
            "encrypt at rest always (a customer-managed key is set on the bucket or account)"
        )
    if sse not in SSE_VALUES:
        raise StagingMisconfigured(f"{SSE_ENV} must be one of {', '.join(SSE_VALUES)}: {sse!r}")
    if key and not sse.startswith("aws:kms"):
        raise StagingMisconfigured(f"{KMS_KEY_ENV} needs {SSE_ENV}=aws:kms (or aws:kms:dsse)")
    return {"ServerSideEncryption": sse, **({"SSEKMSKeyId": key} if key else {})}
