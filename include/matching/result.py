"""What a match gives the refresh: the counts a run records and where its members are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.config.segments import SegmentConfig
    from include.matching.carry import Update
    from include.matching.decide import Counts


@dataclass(frozen=True)
class MatchResult:
    connector_users: int
    netmera_users: int
    matched_source_users: int
    reachable: int | None  # None when the user table has no push permission column
    reasons: dict[str, int] = field(default_factory=dict)
    matched_by: dict[str, int] = field(default_factory=dict)
    members_path: str = ""
    unmatched_path: str = ""  # user_key, reason of every unmatched source user
    mode: str = "full"  # or "incremental": only some source users were matched again
    rematched: int = 0  # the source users matched again (in full: all of them)
    resolutions: Update | None = None  # what the store keeps for the next match (carry.py)
    # The run whose members this match's change is against (decide.ENTERED_FILE and LEFT_FILE
    # beside the members): an incremental match's previous one.
    changed_since: str | None = None

    @classmethod
    def of(
        cls, segment: SegmentConfig, counts: Counts, members: str, unmatched: str
    ) -> MatchResult:
        """The decision's counts, `matched_by` listing every kind of the segment in order."""
        return cls(
            connector_users=counts.connector_users,
            netmera_users=counts.netmera_users,
            matched_source_users=counts.matched_source_users,
            reachable=counts.reachable,
            reasons=counts.reasons,
            matched_by={
                i.kind.value: counts.matched_by.get(i.kind.value, 0) for i in segment.identifiers
            },
            members_path=members,
            unmatched_path=unmatched,
            rematched=counts.connector_users,
        )

    @property
    def match_rate(self) -> float:
        return self.matched_source_users / self.connector_users if self.connector_users else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
