"""Segment configuration: one YAML file per connector segment, validated with pydantic.

This module is imported by the DAG file at parse time, so it must stay cheap: pydantic and
PyYAML only (files are read by `segment_file`, which bounds what one file can cost). Every
error names the file and the field so that a broken YAML is fixable from the message alone (in
`python -m include.cli validate` and in Airflow's import errors).
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from include.config.segment_file import UnreadableSegmentFile, read_segment_yaml

DEFAULT_SEGMENTS_DIR = Path(__file__).resolve().parents[1] / "segments"
SUFFIXES = (".yaml", ".yml")
SEGMENTS_DIR_ENV = "CONNECTOR_SEGMENTS_DIR"

# Airflow's schedule presets; anything else must look like a 5-field cron expression.
_PRESETS = {
    "@once",
    "@continuous",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@annually",
    "@midnight",
}
_CRON_FIELD = re.compile(r"^[\d*/,\-?LW#A-Za-z]+$")
TAG_MAX_LEN = 100  # Airflow refuses a longer tag when the DAG is built: every DAG of the file

# `access`: which teams (FAB roles) see the segment, and whether they may act on it.
AccessLevel = Literal["read", "act"]
ROLE_NAME_MAX_LEN = 64  # FAB's ab_role.name column
# FAB's built-in roles keep their global access; `access sync` rewrites the roles it names, so
# these are refused (in any case: some databases compare names without it).
BUILTIN_ROLES = ("Admin", "Op", "User", "Viewer", "Public")
_BUILTIN_FOLDED = frozenset(name.casefold() for name in BUILTIN_ROLES)


class IdentifierKind(StrEnum):
    EXTERNAL_ID = "external_id"
    EMAIL = "email"
    MSISDN = "msisdn"
    INSTALLATION_ID = "installation_id"
    EMAIL_SHA256 = "email_sha256"
    MSISDN_SHA256 = "msisdn_sha256"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a guardrail must not silently disable it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSource(_Strict):
    """A CSV or Parquet file: a local path (relative to the YAML's folder) or an fsspec URL."""

    type: Literal["file"]
    path: str = Field(min_length=1)
    format: Literal["csv", "parquet"] | None = None  # inferred from the suffix when absent


class SqlSource(_Strict):
    """A query run through an Airflow Connection (any SQLAlchemy-reachable database)."""

    type: Literal["sql"]
    conn_id: str = Field(min_length=1)
    query: str = Field(min_length=1)


class MixpanelSource(_Strict):
    """A Mixpanel cohort, pulled page by page through the Engage query API."""

    type: Literal["mixpanel"]
    cohort_id: int = Field(gt=0)
    conn_id: str = Field(default="mixpanel_default", min_length=1)


class MixpanelWebhookSource(_Strict):
    """A Mixpanel cohort pushed to our webhook; `conn_id` holds the Basic-auth login/password."""

    type: Literal["mixpanel_webhook"]
    conn_id: str = Field(min_length=1)


class AmplitudeSource(_Strict):
    """An Amplitude behavioural cohort: request, poll, download."""

    type: Literal["amplitude"]
    cohort_id: str = Field(min_length=1)
    conn_id: str = Field(default="amplitude_default", min_length=1)


Source = Annotated[
    FileSource | SqlSource | MixpanelSource | MixpanelWebhookSource | AmplitudeSource,
    Field(discriminator="type"),
]

SOURCE_TYPES = tuple(
    source.model_fields["type"].annotation.__args__[0]
    for source in (FileSource, SqlSource, MixpanelSource, MixpanelWebhookSource, AmplitudeSource)
)
# Sources whose user key is fixed by the vendor's payload.
FIXED_USER_KEY = {"mixpanel": "$distinct_id", "mixpanel_webhook": "mixpanel_distinct_id"}


class Identifier(_Strict):
    field: str = Field(min_length=1)
    kind: IdentifierKind


class Guardrails(_Strict):
    """Limits past which a refresh is Held for a person to approve instead of published.

    `max_shrink` / `max_growth` are fractions of the published Netmera Users (0.5 = 50 %);
    null disables the check.
    """

    min_match_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    max_shrink: float | None = Field(default=0.5, ge=0.0, le=1.0)
    max_growth: float | None = Field(default=3.0, ge=0.0)
    allow_empty: bool = False


MAX_HOLDOUT_PERCENT = 50  # a holdout past half the audience is no campaign


SendAudience = Literal["all", "entered"]
SEND_AUDIENCES: tuple[SendAudience, ...] = ("all", "entered")


class Campaign(_Strict):
    """The segment's default message for Send Message (trigger Params may override the text)."""

    title: str = Field(min_length=1)
    text: str = Field(min_length=1)
    platforms: tuple[Literal["IOS", "ANDROID"], ...] = Field(
        default=("IOS", "ANDROID"), min_length=1
    )
    send_on_refresh: bool = False
    # The share of addressable members held out of each send (recorded, never messaged); a
    # number (decimals allowed), strictly: `true` or "10" are mistakes, not 1 % or 10 %.
    holdout_percent: float = Field(default=0.0, ge=0, le=MAX_HOLDOUT_PERCENT, strict=True)
    # Who a send messages: every member of the version, or only those who entered since the
    # version the same message was last sent to (a welcome flow with send_on_refresh).
    audience: SendAudience = "all"


AlertEvent = Literal["failed", "held", "stale"]
ALERT_EVENTS: tuple[AlertEvent, ...] = ("failed", "held", "stale")
# One address: something@domain, no spaces, lists or display names; the SMTP server decides
# the rest (the audience's email rules do not apply to who gets the alerts).
_ALERT_ADDRESS = re.compile(r"[^@\s,;:<>()\[\]\"]+@[^@\s,;:<>()\[\]\"]+\.[^@\s,;:<>()\[\]\"]+")


class SlackAlert(_Strict):
    """A Slack incoming webhook: the Airflow Connection (type `slackwebhook`) holds its URL."""

    conn_id: str = Field(default="slack_default", min_length=1)


class EmailAlert(_Strict):
    """Mail through the SMTP Connection `conn_id` (its extra `from_email` is the sender)."""

    to: tuple[str, ...] = Field(min_length=1, max_length=50)
    conn_id: str = Field(default="smtp_default", min_length=1)

    @field_validator("to")
    @classmethod
    def _one_address_each(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for number, address in enumerate(value, 1):
            if len(address) > 254 or not _ALERT_ADDRESS.fullmatch(address):
                # Not quoted: an address is a person's, and this message reaches the UI.
                raise ValueError(f"entry {number} is not one address (name@domain, no list)")
        return value


class Alerts(_Strict):
    """Who hears when the segment turns Failed, Held or Stale (default: all three)."""

    on: tuple[AlertEvent, ...] = Field(default=ALERT_EVENTS, min_length=1)
    slack: SlackAlert | None = None
    email: EmailAlert | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_11_on(cls, value: object) -> object:
        # YAML 1.1 (PyYAML) reads the bare keys `on` and `off` as booleans: give them back
        # their names, so `on:` works unquoted and `off:` is reported as the unknown key it is.
        if not isinstance(value, dict) or not any(isinstance(k, bool) for k in value):
            return value
        renamed = {
            ("on" if k else "off") if isinstance(k, bool) else k: v for k, v in value.items()
        }
        if len(renamed) != len(value):
            raise ValueError("key 'on' or 'off' is given twice (once quoted, once not)")
        return renamed

    @field_validator("on")
    @classmethod
    def _events_once(cls, value: tuple[AlertEvent, ...]) -> tuple[AlertEvent, ...]:
        if len(set(value)) != len(value):
            raise ValueError("an event is listed twice")
        return value

    @model_validator(mode="after")
    def _has_a_channel(self) -> Alerts:
        if self.slack is None and self.email is None:
            raise ValueError("name at least one channel: 'slack' or 'email'")
        return self


class SegmentConfig(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$", max_length=200)
    name: str = Field(min_length=1, max_length=200)  # also the DAG's display name
    description: str = Field(default="", max_length=10_000)
    schedule: str | None = None
    owner: str = Field(default="data-platform", min_length=1, max_length=100)
    tags: tuple[Annotated[str, Field(min_length=1, max_length=TAG_MAX_LEN)], ...] = Field(
        default=(), max_length=20
    )
    source: Source
    user_key: str = Field(min_length=1)
    identifiers: tuple[Identifier, ...] = Field(min_length=1)
    default_region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    guardrails: Guardrails = Guardrails()
    # Incremental matching: at least this often the match is a full one (docs/connections.md).
    full_refresh_days: StrictInt = Field(default=7, ge=1)
    campaign: Campaign | None = None
    alerts: Alerts | None = None  # none: nobody is alerted (the status still shows it)
    access: dict[str, AccessLevel] | None = None  # FAB role: read | act (DAG access_control)

    # Set by the loader, not by the YAML: where this config came from.
    config_path: Path | None = Field(default=None, exclude=True)

    @field_validator("schedule")
    @classmethod
    def _schedule_is_cron_or_preset(cls, value: str | None) -> str | None:
        if value is None or value in _PRESETS:
            return value
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(
                f"{value!r} is neither a 5-field cron expression nor one of {sorted(_PRESETS)}"
            )
        # Read as Airflow's cron timetables read it (croniter): a value they refuse would be
        # an import error on the file that builds every segment's DAG.
        from croniter import CroniterBadCronError, CroniterBadDateError, croniter

        try:
            croniter(value)
        except (CroniterBadCronError, CroniterBadDateError) as exc:
            raise ValueError(f"{value!r} is not a valid cron expression: {exc}") from None
        return value

    @field_validator("access")
    @classmethod
    def _roles_airflow_can_hold(
        cls, value: dict[str, AccessLevel] | None
    ) -> dict[str, AccessLevel] | None:
        for role in value or {}:
            if (
                not role.strip()
                or role != role.strip()
                or len(role) > ROLE_NAME_MAX_LEN
                or not role.isprintable()
            ):
                raise ValueError(
                    f"role {role!r} is not a name Airflow can hold: 1 to {ROLE_NAME_MAX_LEN} "
                    "printable characters, no space at either end"
                )
            if role.casefold() in _BUILTIN_FOLDED:
                raise ValueError(
                    f"role {role!r} is one of Airflow's built-in roles "
                    f"({', '.join(BUILTIN_ROLES)}), which see every segment already: name a "
                    "team's own role"
                )
        return value

    @field_validator("identifiers")
    @classmethod
    def _fields_unique(cls, value: tuple[Identifier, ...]) -> tuple[Identifier, ...]:
        seen = [(i.field, i.kind) for i in value]
        if len(seen) != len(set(seen)):
            raise ValueError("the same (field, kind) pair is listed twice")
        return value

    @model_validator(mode="after")
    def _user_key_fits_the_source(self) -> SegmentConfig:
        fixed = FIXED_USER_KEY.get(self.source.type)
        if fixed and self.user_key != fixed:
            raise ValueError(
                f"field 'user_key' must be {fixed!r} for a {self.source.type} source, "
                f"got {self.user_key!r}"
            )
        return self

    @property
    def dag_id(self) -> str:
        return dag_id_of(self.id)

    @property
    def source_fields(self) -> list[str]:
        """Columns to read from the source: the user key, then identifier fields, each once."""
        return list(dict.fromkeys([self.user_key, *(i.field for i in self.identifiers)]))

    def snapshot(self) -> dict[str, Any]:
        """The config as a run records it at its start (`cs_runs.config`): its JSON dump plus
        the YAML's path (excluded from dumps, and what a file source's path is relative to)."""
        path = str(self.config_path) if self.config_path else None
        return {**self.model_dump(mode="json"), _SNAPSHOT_PATH: path}

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> SegmentConfig:
        """The config a run recorded (`snapshot`), validated again."""
        path = snapshot.get(_SNAPSHOT_PATH)
        config = cls.model_validate({k: v for k, v in snapshot.items() if k != _SNAPSHOT_PATH})
        return config.model_copy(update={"config_path": Path(path) if path else None})


# Where a snapshot keeps the YAML's path: no config field starts with "_".
_SNAPSHOT_PATH = "_config_path"


DAG_PREFIX = "connector_segment_"
_SEGMENT_ID = re.compile(r"[a-z0-9_]{1,200}")  # as the `id` field


def dag_id_of(segment_id: str) -> str:
    """A segment's DAG id (also for a segment whose YAML is gone)."""
    return f"{DAG_PREFIX}{segment_id}"


def segment_of_dag(dag_id: str) -> str | None:
    """The segment id of a segment's DAG id; None for any other DAG id (or one no YAML could
    have: never a path)."""
    segment_id = dag_id.removeprefix(DAG_PREFIX)
    if segment_id == dag_id or not _SEGMENT_ID.fullmatch(segment_id):
        return None
    return segment_id


class SegmentConfigError(ValueError):
    """A segment YAML that cannot be used; the message names the file and the field."""


class SegmentNotFound(SegmentConfigError):
    """No YAML file for the segment id."""


@dataclass(frozen=True)
class LoadResult:
    segments: list[SegmentConfig]
    errors: list[SegmentConfigError]


def segments_dir() -> Path:
    return Path(os.environ.get(SEGMENTS_DIR_ENV) or DEFAULT_SEGMENTS_DIR)


def _describe(exc: ValidationError, path: Path) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{path}: field '{loc}': {msg}")
    return "\n".join(lines)


def load_segment(path: Path) -> SegmentConfig:
    """Parse and validate one YAML file; raise SegmentConfigError naming the file and field."""
    try:
        raw = read_segment_yaml(path)
    except UnreadableSegmentFile as exc:
        raise SegmentConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise SegmentConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        config = SegmentConfig.model_validate(raw)
    except ValidationError as exc:
        raise SegmentConfigError(_describe(exc, path)) from exc
    if config.id != path.stem:
        # The file name is what people grep for; keep it equal to the id (and the DAG id).
        raise SegmentConfigError(
            f"{path}: field 'id': {config.id!r} must equal the file name {path.stem!r}"
        )
    return config.model_copy(update={"config_path": path})


def shard_of(segment_id: str, shards: int) -> int:
    """The segment's shard out of `shards`: stable across processes and releases (not
    Python's salted `hash`), by the id, which is also the file name."""
    return zlib.crc32(segment_id.encode()) % shards


def load_segments(
    directory: Path | None = None, *, shard: tuple[int, int] | None = None
) -> LoadResult:
    """Load every `*.yaml` / `*.yml` in the directory (of `shard` = (number, shards) only,
    by file name: other files are not read); one bad file never hides the others."""
    directory = directory or segments_dir()
    segments: list[SegmentConfig] = []
    errors: list[SegmentConfigError] = []
    for segment_id, paths in _files_by_id(directory).items():
        if shard is not None and shard_of(segment_id, shard[1]) != shard[0]:
            continue
        try:
            segments.append(load_segment(_only_file(paths)))
        except SegmentConfigError as exc:
            errors.append(exc)
    return LoadResult(segments=segments, errors=errors)


def find_segment(segment_id: str, directory: Path | None = None) -> SegmentConfig:
    directory = directory or segments_dir()
    paths = [directory / f"{segment_id}{suffix}" for suffix in SUFFIXES]
    paths = [path for path in paths if path.exists() or path.is_symlink()]
    if not paths:
        raise SegmentNotFound(f"segment {segment_id!r}: no {segment_id}.yaml in {directory}")
    return load_segment(_only_file(paths))


def _files_by_id(directory: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(p for suffix in SUFFIXES for p in directory.glob(f"*{suffix}")):
        found.setdefault(path.stem, []).append(path)
    return found


def _only_file(paths: list[Path]) -> Path:
    """`x.yaml` and `x.yml` both present: neither is used (which one would the DAG be?)."""
    if len(paths) > 1:
        raise SegmentConfigError(
            f"{paths[0]}: field 'id': segment {paths[0].stem!r} is defined twice ("
            + " and ".join(p.name for p in paths)
            + "); neither is loaded until one is removed"
        )
    return paths[0]
