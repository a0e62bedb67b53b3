"""Staging in object storage: S3, played by moto in server mode on 127.0.0.1 (tests/fakes/s3.py),
reached through an Airflow Connection as in production (`s3://aws_staging@bucket/prefix`).

Refreshes through `dag.test()` publish exactly what local staging publishes and leave no
object and no scratch folder behind, and every upload carries the encryption asked for; the
store stopping between extract and match fails the run naming the store and keeps the
membership, and the next run after it returns publishes; settings that cannot work are refused
before anything is staged; a retried extract on another host resumes from the checkpoints the
store keeps; what a killed upload or step left is removed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from include.staging import SCRATCH_PREFIX, STAGING_DIR_ENV, StagingError
from tests.conftest import run_segment, sqlite_conn, write_users
from tests.fakes import FakeAmplitude, FakeMixpanel
from tests.fakes.s3 import LOGIN, SECRET, S3Store, shared_store
from tests.test_refresh_dag import (
    SEGMENT,
    USERS,
    snapshot,
    unchanged,
    write_audience,
    write_segment,
)
from tests.test_vendor_sources import MEMBERS, connect_mixpanel, mixpanel_segment
from tests.test_vendor_sources import SECRET as MIXPANEL_SECRET

pytestmark = pytest.mark.dagrun

CONN_ID = "aws_staging"
PREFIX = "staging"
# Short botocore retries: a stopped store fails a step in seconds, not minutes.
CLIENT_CONFIG = {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 2}


@dataclass
class S3Staging:
    store: S3Store
    bucket: str
    scratch: Path  # the test's TMPDIR: where steps make their scratch folders

    @property
    def url(self) -> str:
        return f"s3://{CONN_ID}@{self.bucket}/{PREFIX}"

    @property
    def shown(self) -> str:
        """The store as logs and errors name it: no Connection id in the URL."""
        return f"s3://{self.bucket}/{PREFIX}"

    def objects(self) -> list[str]:
        return self.store.keys(self.bucket, PREFIX + "/")

    def scratch_left(self) -> list[str]:
        return [p.name for p in self.scratch.rglob(f"{SCRATCH_PREFIX}*")]

    def uploads(self) -> list:
        return [r for r in self.store.uploads() if r.path.startswith(f"/{self.bucket}/")]


@pytest.fixture
def s3(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Staging]:
    """Staging in a fresh bucket of the test process's S3 (the workspace's other settings
    kept), and a TMPDIR of the test's own."""
    store = shared_store()
    bucket = f"stage-{uuid.uuid4().hex[:12]}"
    store.client().create_bucket(Bucket=bucket)
    scratch = workspace / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", store.connection(**CLIENT_CONFIG))
    s3 = S3Staging(store, bucket, scratch)
    monkeypatch.setenv(STAGING_DIR_ENV, s3.url)
    yield s3
    shared_store()  # started again if a test stopped it


# -- the same refreshes, staged locally and in S3 ----------------------------------------------


def refreshes(ws: Path, capsys, after_each) -> list[dict]:
    """A first publish, a refresh that changes the membership, one Held by `max_shrink`, one
    whose match fails: what each left (`after_each()` checks what staging kept)."""
    write_users(ws / "netmera.db", USERS)
    write_segment(ws)
    seen = []

    def refresh(ext_ids: range) -> None:
        write_audience(ws, ext_ids)
        state = run_segment(SEGMENT)
        seen.append({"state": state, **comparable(snapshot(capsys))})
        after_each()

    refresh(range(1, 11))
    refresh(range(3, 13))
    refresh(range(3, 5))  # 10 -> 2: Held
    with sqlite3.connect(ws / "netmera.db") as conn:
        conn.execute("ALTER TABLE netmera_users RENAME TO netmera_users_moved")
    refresh(range(5, 15))  # match fails
    return seen


def comparable(details: dict) -> dict:
    """What a refresh published and recorded, without times and run ids."""
    run = details["runs"][0]
    kept = ("status", "current_version", "connector_users", "netmera_users", "reachable")
    return {
        **{k: details[k] for k in (*kept, "reasons", "matched_by", "members")},
        "run": {k: run[k] for k in ("status", "version", "added", "removed", "failed_step")},
    }


def test_refreshes_staged_in_s3_publish_what_local_staging_publishes_and_leave_nothing(
    workspace: Path, s3: S3Staging, monkeypatch: pytest.MonkeyPatch, capsys, logs
):
    local, remote = workspace / "local", workspace / "s3"
    for ws in (local, remote):
        (ws / "segments").mkdir(parents=True)

    def use(ws: Path) -> None:
        monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(ws / "segments"))
        monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", sqlite_conn(ws / "netmera.db"))

    def nothing_staged_locally() -> None:
        assert [p for p in (local / "staging").rglob("*") if p.is_file()] == []

    def nothing_staged_in_s3() -> None:
        assert s3.objects() == []
        assert s3.scratch_left() == []

    use(local)
    monkeypatch.setenv(STAGING_DIR_ENV, str(local / "staging"))
    staged_locally = refreshes(local, capsys, nothing_staged_locally)

    use(remote)
    monkeypatch.setenv(STAGING_DIR_ENV, s3.url)
    monkeypatch.setenv("CONNECTOR_SEGMENTS_STAGING_SSE", "AES256")
    staged_in_s3 = refreshes(remote, capsys, nothing_staged_in_s3)

    assert staged_in_s3 == staged_locally
    assert [(r["state"], r["status"], r["current_version"]) for r in staged_in_s3] == [
        ("success", "Ready", 1),
        ("success", "Ready", 2),
        ("success", "Held", 2),
        ("failed", "Failed", 2),
    ]
    # Every upload asked for the encryption: the audience of each run, the members of the
    # three that matched.
    uploads = s3.uploads()
    assert len(uploads) == 4 + 3
    assert {r.sse for r in uploads} == {"AES256"}
    assert not (local / "staging").exists() or not any((local / "staging").rglob("*.parquet"))
    text = logs.text
    assert f"staging in {s3.shown} (Airflow Connection '{CONN_ID}')" in text
    for secret in (LOGIN, SECRET, f"{CONN_ID}@"):
        assert secret not in text


# -- the store stopped mid-run -------------------------------------------------------------------


def test_the_store_stopped_between_extract_and_match_fails_the_run_and_keeps_the_membership(
    workspace: Path, s3: S3Staging, capsys, logs
):
    write_users(workspace / "netmera.db", USERS)
    write_segment(workspace)
    write_audience(workspace, range(1, 11))
    assert run_segment(SEGMENT) == "success"
    before = snapshot(capsys)

    write_audience(workspace, range(3, 13))
    # Extract stages and uploads the audience; the store stops when match asks for it.
    s3.store.down_at(f"/{s3.bucket}/{PREFIX}/{SEGMENT}/", "/audience.parquet")
    assert run_segment(SEGMENT) == "failed"
    assert s3.store.went_down.is_set()
    after = snapshot(capsys)
    unchanged(before, after)
    assert after["status"] == "Failed"
    error = after["runs"][0]["error"]
    assert after["status_reason"].startswith("match:"), after["status_reason"]
    assert f"staging store {s3.shown} (Airflow Connection '{CONN_ID}'), step match:" in error
    assert "audience.parquet" in error
    assert "not removed" in logs.text  # the run's files could not go while the store was down
    assert s3.scratch_left() == []  # the step's scratch went with the step all the same

    shared_store()  # the store is back, with the failed run's audience still in it
    assert [k.rsplit("/", 1)[1] for k in s3.objects()] == ["audience.parquet"]
    assert run_segment(SEGMENT) == "success"
    again = snapshot(capsys)
    assert again["status"] == "Ready"
    assert again["current_version"] == 2
    assert again["members"] == sorted(f"nm-{i}" for i in range(3, 13))
    assert s3.objects() == []  # the next run's start removed what the failed one left
    for secret in (LOGIN, SECRET):
        assert secret not in logs.text + json.dumps(after)


# -- settings that cannot work -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "says", "never"),
    [
        ({STAGING_DIR_ENV: "s3://aws_staging@/staging"}, "names no bucket", None),
        ({STAGING_DIR_ENV: "s3://aws_staging@My_Bucket/x"}, "is not a bucket", None),
        ({STAGING_DIR_ENV: "s3://aws_staging@bucket/"}, "names no prefix inside the bucket", None),
        ({STAGING_DIR_ENV: "ftpx://aws_staging@bucket/x"}, "no filesystem for ftpx://", None),
        ({STAGING_DIR_ENV: "gs://gcp@bucket/x"}, "gcsfs", None),
        (
            {STAGING_DIR_ENV: "s3://no_such_conn@bucket/x"},
            "Airflow Connection 'no_such_conn' is not defined",
            None,
        ),
        (
            {STAGING_DIR_ENV: "s3://AKIAXX:hunter2secret@bucket/x"},
            "must be an Airflow Connection id",
            "hunter2secret",
        ),
        (
            {STAGING_DIR_ENV: "s3://aws_staging@bucket/x?sig=hunter2secret"},
            "query string",
            "hunter2secret",
        ),
        (
            {STAGING_DIR_ENV: "s3://aws_staging@bucket/x", "CONNECTOR_SEGMENTS_STAGING_SSE": "DES"},
            "must be one of AES256, aws:kms, aws:kms:dsse",
            None,
        ),
        (
            {
                STAGING_DIR_ENV: "s3://aws_staging@bucket/x",
                "CONNECTOR_SEGMENTS_STAGING_SSE": "AES256",
                "CONNECTOR_SEGMENTS_STAGING_KMS_KEY_ID": "key-1",
            },
            "needs CONNECTOR_SEGMENTS_STAGING_SSE=aws:kms",
            None,
        ),
        ({"CONNECTOR_SEGMENTS_STAGING_SSE": "AES256"}, "is a local folder", None),
        (
            {STAGING_DIR_ENV: "gs://gcp@bucket/x", "CONNECTOR_SEGMENTS_STAGING_SSE": "AES256"},
            "apply to S3 only",
            None,
        ),
    ],
)
def test_staging_settings_that_cannot_work_are_refused_naming_the_rule(
    s3: S3Staging, monkeypatch: pytest.MonkeyPatch, env: dict, says: str, never: str | None
):
    from airflow.sdk.exceptions import AirflowFailException

    from include.orchestration.staging_store import staging

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if STAGING_DIR_ENV not in env:
        monkeypatch.setenv(STAGING_DIR_ENV, str(s3.scratch / "local"))
    with pytest.raises(AirflowFailException) as refused:  # no retry can fix a setting
        staging()
    message = str(refused.value)
    assert says in message
    assert "CONNECTOR_SEGMENTS_STAGING" in message
    if never:
        assert never not in message


def test_a_bad_staging_url_fails_the_run_at_start_naming_the_setting(
    workspace: Path, s3: S3Staging, monkeypatch: pytest.MonkeyPatch, capsys
):
    write_users(workspace / "netmera.db", USERS)
    write_segment(workspace)
    write_audience(workspace, range(1, 11))
    monkeypatch.setenv(STAGING_DIR_ENV, "s3://aws_staging@/staging")
    assert run_segment(SEGMENT) == "failed"
    details = snapshot(capsys)
    assert details["status"] == "Failed"
    assert details["status_reason"].startswith("start:")
    assert (
        "CONNECTOR_SEGMENTS_STAGING_DIR (s3:///staging): names no bucket"
        in (details["runs"][0]["error"])
    )


# -- encryption, scratch folders, leftovers -----------------------------------------------------


def test_uploads_carry_the_kms_key_asked_for(s3: S3Staging, monkeypatch: pytest.MonkeyPatch):
    from include.orchestration.staging_store import staging

    key = s3.store.client("kms").create_key()["KeyMetadata"]["KeyId"]
    monkeypatch.setenv("CONNECTOR_SEGMENTS_STAGING_SSE", "aws:kms")
    monkeypatch.setenv("CONNECTOR_SEGMENTS_STAGING_KMS_KEY_ID", key)
    with staging().step("seg", "manual__1", "extract") as run:
        (run.folder / "audience.parquet").write_bytes(b"PAR1")
        location = run.keep(run.folder / "audience.parquet")
    assert location == f"{s3.shown}/seg/manual__1/audience.parquet"
    head = s3.store.client().head_object(
        Bucket=s3.bucket, Key=f"{PREFIX}/seg/manual__1/audience.parquet"
    )
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(key)
    ((upload),) = s3.uploads()
    assert (upload.sse, upload.kms_key) == ("aws:kms", key)


def test_each_step_works_in_a_private_scratch_folder_removed_when_it_ends(s3: S3Staging):
    from include.orchestration.staging_store import staging

    # What a step of this segment killed on this host left, and another segment's scratch.
    leftover = s3.scratch / f"{SCRATCH_PREFIX}seg+manual__0+abc"
    other = s3.scratch / f"{SCRATCH_PREFIX}other+manual__0+abc"
    for folder in (leftover, other):
        folder.mkdir()
        (folder / "audience.parquet").write_bytes(b"PAR1")
    os.umask(0o022)  # the worker's own umask: the step makes its files private all the same
    with staging().step("seg", "manual__1", "extract") as run:
        assert run.folder.parent == s3.scratch
        assert stat.S_IMODE(run.folder.stat().st_mode) == 0o700
        written = run.folder / "audience.parquet"
        written.write_bytes(b"PAR1")
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
        run.keep(written)
        assert not leftover.exists()  # no step of `seg` runs but this one
        assert other.exists()
    assert s3.scratch_left() == [other.name]
    # A later step on another host finds what this one kept.
    with staging().step("seg", "manual__1", "match") as run:
        assert run.fetch("audience.parquet").read_bytes() == b"PAR1"
        with pytest.raises(StagingError, match=r"step match: downloading .*members\.parquet"):
            run.fetch("members.parquet")


def test_removing_a_run_aborts_its_unfinished_multipart_uploads(s3: S3Staging):
    """A worker killed mid-upload leaves parts no listing shows; they hold personal data."""
    from include.orchestration.staging_store import staging

    client = s3.store.client()
    for run in ("manual__1", "manual__2", "manual__3"):
        key = f"{PREFIX}/seg/{run}/audience.parquet"
        upload = client.create_multipart_upload(Bucket=s3.bucket, Key=key)
        client.upload_part(
            Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )
        client.put_object(
            Bucket=s3.bucket, Key=f"{PREFIX}/seg/{run}/mixpanel/state.json", Body=b"{}"
        )
    store = staging()
    store.remove_other_runs("seg", "manual__3", "start")
    assert s3.objects() == [
        f"(upload) {PREFIX}/seg/manual__3/audience.parquet",
        f"{PREFIX}/seg/manual__3/mixpanel/state.json",
    ]
    assert store.remove_run("seg", "manual__3", "publish")
    assert s3.objects() == []


# -- a retry on another host ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page_lost", "asked_again"), [(False, [2, 3]), (True, [0, 1, 2, 3])], ids=["kept", "lost"]
)
def test_a_retried_extract_on_another_host_resumes_from_the_checkpoints_kept_in_s3(
    workspace: Path,
    s3: S3Staging,
    monkeypatch: pytest.MonkeyPatch,
    page_lost: bool,
    asked_again: list[int],
):
    """Resumed at the first page not kept; read again from page 0 when a kept page is gone
    (expired by the bucket's lifecycle rule, say): never a partial audience."""
    from include.connectors import SourceError
    from include.orchestration import refresh

    host_a, host_b = s3.scratch / "a", s3.scratch / "b"
    host_a.mkdir()
    host_b.mkdir()
    with FakeMixpanel(
        username="svc-user", secret=MIXPANEL_SECRET, project_id=77, page_size=3
    ) as mp:
        mixpanel_segment(workspace, mp)
        connect_mixpanel(monkeypatch, mp, max_attempts=2)
        config = config_of(workspace, "mp")
        run_id = "manual__resume"
        refresh.start(config, run_id, dry_run=False, approve=False)

        # Host A: pages 0 and 1 land, page 2 keeps failing.
        monkeypatch.setattr(tempfile, "tempdir", str(host_a))
        mp.fail_next("500", path=FakeMixpanel.ENGAGE, after=2, times=2)
        with pytest.raises(SourceError, match="gave up"):
            refresh.extract(config, run_id)
        run = f"{PREFIX}/mp/{run_id}/"
        kept = [k.removeprefix(run) for k in s3.objects()]
        assert kept == [
            "mixpanel/page-0000000.parquet",
            "mixpanel/page-0000001.parquet",
            "mixpanel/state.json",
        ]
        assert list(host_a.iterdir()) == []
        if page_lost:
            s3.store.client().delete_object(Bucket=s3.bucket, Key=run + kept[0])

        # Host B, without host A's disk: resumes at page 2 with the same session, or reads the
        # cohort again when a kept page is gone.
        monkeypatch.setattr(tempfile, "tempdir", str(host_b))
        mp.clear_requests()
        staged = refresh.extract(config, run_id)
        assert [int(r.param("page")) for r in mp.requests_to(FakeMixpanel.ENGAGE)] == asked_again
        assert staged.rows == len(MEMBERS)
        assert staged.path == f"{s3.shown}/mp/{run_id}/audience.parquet"
        assert list(host_b.iterdir()) == []

        assert staged_nothing_left(s3, "mp", run_id)


def test_a_retried_amplitude_extract_on_another_host_reuses_the_export_kept_in_s3(
    workspace: Path, s3: S3Staging, monkeypatch: pytest.MonkeyPatch
):
    """The export's request id, then its download, are kept: a retry on another host asks
    Amplitude for no second export; a download no longer kept is downloaded again."""
    from include.connectors import SourceError
    from include.orchestration import refresh
    from tests.test_vendor_sources import ROWS, vendor_conn
    from tests.test_vendor_sources import write_segment as write_vendor_segment

    with FakeAmplitude(api_key="amp-key", secret_key=MIXPANEL_SECRET) as amplitude:
        amplitude.add_cohort("coh-1", "Churn risk", ROWS, gzip=True, mode="body")
        write_users(workspace / "netmera.db", [("nm-x", "00-0000000", None, None, None, True)])
        source = {"type": "amplitude", "cohort_id": "coh-1"}
        write_vendor_segment(workspace, "amp", source, "amplitude_id", {"user_id": "external_id"})
        fast = {"poll_interval": 0.01, "requests_per_hour": 36_000, "max_attempts": 2}
        vendor_conn(monkeypatch, "amplitude_default", amplitude, "amp-key", **fast)
        config = config_of(workspace, "amp")
        run_id = "manual__resume"
        refresh.start(config, run_id, dry_run=False, approve=False)

        def extract_on(host: str):
            (s3.scratch / host).mkdir()
            monkeypatch.setattr(tempfile, "tempdir", str(s3.scratch / host))
            return refresh.extract(config, run_id)

        amplitude.fail_next("500", path=FakeAmplitude.FILE, times=2)  # the download fails
        with pytest.raises(SourceError):
            extract_on("a")
        run = f"{PREFIX}/amp/{run_id}/"
        assert [k.removeprefix(run) for k in s3.objects()] == ["amplitude/state.json"]
        assert extract_on("b").rows == len(ROWS)
        assert "amplitude/cohort.download" in [k.removeprefix(run) for k in s3.objects()]
        s3.store.client().delete_object(Bucket=s3.bucket, Key=run + "amplitude/cohort.download")
        assert extract_on("c").rows == len(ROWS)
        assert len(amplitude.requests_to(FakeAmplitude.REQUEST)) == 1
        assert len([r for r in amplitude.requests_to(FakeAmplitude.FILE) if not r.fault]) == 2
        assert staged_nothing_left(s3, "amp", run_id)


def staged_nothing_left(s3: S3Staging, segment_id: str, run_id: str) -> bool:
    from include.orchestration import refresh

    refresh.record_failure(segment_id, run_id, "match", "a later step failed")
    return s3.objects() == [] and s3.scratch_left() == []


def config_of(ws: Path, segment_id: str):
    from include.config.segments import SegmentConfig

    path = ws / "segments" / f"{segment_id}.yaml"
    return SegmentConfig.model_validate(yaml.safe_load(path.read_text()))
