"""The refresh's Great Expectations suites and the decision they lead to.

Two suites, told apart on purpose:
- *data* (members): matched members have non-null, unique Netmera user ids, as many as counted
  (counted by DuckDB off the members Parquet; GX checks the one-row summary).
  A failure means the data is wrong: the run is Failed, and no approval can publish it.
- *guardrails* (one row of counts): Connector Users > 0 unless `allow_empty`, match rate at or
  above `min_match_rate`, shrink/growth of Netmera Users against the published version within
  `max_shrink` / `max_growth`. A failure Holds the refresh until a person approves it.
GX Core runs in an ephemeral context inside the task (the GX Airflow provider does not install
beside Airflow 3.3). The summary returned is stored on the run record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.config.segments import Guardrails
    from include.matching.result import MatchResult

PASS, FAIL, HOLD = "pass", "fail", "hold"


@dataclass(frozen=True)
class Decision:
    outcome: str  # pass | fail | hold
    failures: list[str] = field(default_factory=list)  # data expectations that failed
    holds: list[str] = field(default_factory=list)  # guardrails that tripped
    summary: dict[str, Any] = field(default_factory=dict)


def guardrail_counts(result: MatchResult, published_users: int | None) -> dict[str, float]:
    """The one-row table the guardrail suite checks; shrink/growth are 0 on a first publish."""
    change = 0.0
    if published_users:
        change = (result.netmera_users - published_users) / published_users
    return {
        "connector_users": result.connector_users,
        "match_rate": round(result.match_rate, 6),
        "shrink": max(-change, 0.0),
        "growth": max(change, 0.0),
    }


def _guardrail_expectations(gx: Any, limits: Guardrails, first_publish: bool) -> list[Any]:
    between = gx.expectations.ExpectColumnValuesToBeBetween
    checks = []
    if not limits.allow_empty:
        checks.append(
            between(column="connector_users", min_value=1, meta={"guardrail": "allow_empty"})
        )
    checks.append(
        between(
            column="match_rate",
            min_value=limits.min_match_rate,
            meta={"guardrail": "min_match_rate"},
        )
    )
    if not first_publish and limits.max_shrink is not None:
        checks.append(
            between(column="shrink", max_value=limits.max_shrink, meta={"guardrail": "max_shrink"})
        )
    if not first_publish and limits.max_growth is not None:
        checks.append(
            between(column="growth", max_value=limits.max_growth, meta={"guardrail": "max_growth"})
        )
    return checks


def member_counts(members_path: str) -> dict[str, int]:
    """Nulls, duplicates and rows of the members' user ids, counted by DuckDB off the Parquet
    file: the membership never becomes a pandas frame, however large."""
    import duckdb

    with duckdb.connect() as con:
        nulls, duplicates, rows = con.execute(
            "SELECT count(*) - count(user_id), count(user_id) - count(DISTINCT user_id), "
            "count(*) FROM read_parquet(?)",
            [members_path],
        ).fetchone()
    return {"null_user_ids": nulls, "duplicate_user_ids": duplicates, "member_rows": rows}


def _data_expectations(gx: Any, netmera_users: int) -> list[Any]:
    between = gx.expectations.ExpectColumnValuesToBeBetween
    return [
        between(column="null_user_ids", max_value=0, meta={"check": "not_null"}),
        between(column="duplicate_user_ids", max_value=0, meta={"check": "unique"}),
        between(
            column="member_rows",
            min_value=netmera_users,
            max_value=netmera_users,
            meta={"check": "row_count"},
        ),
    ]


def _run_suite(gx: Any, context: Any, name: str, expectations: list[Any], frame: Any) -> Any:
    asset = context.data_sources.add_pandas(name).add_dataframe_asset(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(
            name=name, data=asset.add_batch_definition_whole_dataframe(name), suite=suite
        )
    )
    return definition.run(batch_parameters={"dataframe": frame})


def _summarise(result: Any) -> list[dict[str, Any]]:
    return [
        {
            "expectation": r.expectation_config.type,
            "check": r.expectation_config.meta.get("guardrail")
            or r.expectation_config.meta.get("check"),
            "success": bool(r.success),
            "observed_value": r.result.get("observed_value"),
            "unexpected_count": r.result.get("unexpected_count"),
        }
        for r in result.results
    ]


def validate(result: MatchResult, limits: Guardrails, published_users: int | None) -> Decision:
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no bars in task logs
    members = member_counts(result.members_path)
    data = _run_suite(
        gx,
        context,
        "members",
        _data_expectations(gx, result.netmera_users),
        pd.DataFrame([members]),
    )
    counts = guardrail_counts(result, published_users)
    guards = _run_suite(
        gx,
        context,
        "guardrails",
        _guardrail_expectations(gx, limits, first_publish=published_users is None),
        pd.DataFrame([counts]),
    )
    data_summary, guard_summary = _summarise(data), _summarise(guards)
    failures = [c["check"] for c in data_summary if not c["success"]]
    holds = [c["check"] for c in guard_summary if not c["success"]]
    outcome = FAIL if failures else HOLD if holds else PASS
    summary = {
        "outcome": outcome,
        "counts": counts,
        "members": members,
        "data": {
            "success": bool(data.success),
            "statistics": dict(data.statistics),
            "results": data_summary,
        },
        "guardrails": {
            "success": bool(guards.success),
            "statistics": dict(guards.statistics),
            "results": guard_summary,
        },
    }
    return Decision(outcome=outcome, failures=failures, holds=holds, summary=summary)


def describe_holds(decision: Decision, limits: Guardrails) -> str:
    """A sentence per tripped guardrail, for the run record and the UI."""
    counts = decision.summary["counts"]
    text = {
        "allow_empty": "the source returned no users (allow_empty is false)",
        "min_match_rate": f"match rate {counts['match_rate']:.1%} is below min_match_rate "
        f"{limits.min_match_rate:.1%}",
        "max_shrink": f"Netmera Users would shrink by {counts['shrink']:.1%}, past max_shrink "
        f"{(limits.max_shrink or 0):.1%}",
        "max_growth": f"Netmera Users would grow by {counts['growth']:.1%}, past max_growth "
        f"{(limits.max_growth or 0):.1%}",
    }
    return "; ".join(text[h] for h in decision.holds)


APPROVAL_TOLERANCE = 0.05  # an approval still holds if a guardrail's figure moved this little


def approval_gaps(decision: Decision, held: dict[str, Any] | None) -> list[str]:
    """Tripped guardrails that an approval does not cover.

    A person approves what the held run showed: the same guardrails, at about the same figures.
    A guardrail the held run did not trip, or one now worse by more than APPROVAL_TOLERANCE,
    holds again.
    """
    if held is None:
        return [f"{h} (no held refresh to approve)" for h in decision.holds]
    was = {c["check"] for c in held["guardrails"]["results"] if not c["success"]}
    now, then = decision.summary["counts"], held["counts"]
    worse = {
        "max_shrink": now["shrink"] > then["shrink"] + APPROVAL_TOLERANCE,
        "max_growth": now["growth"] > then["growth"] + APPROVAL_TOLERANCE,
        "min_match_rate": now["match_rate"] < then["match_rate"] - APPROVAL_TOLERANCE,
        "allow_empty": False,
    }
    gaps = []
    for hold in decision.holds:
        if hold not in was:
            gaps.append(f"{hold} (the held refresh did not trip it)")
        elif worse[hold]:
            gaps.append(f"{hold} (worse than in the held refresh)")
    return gaps
