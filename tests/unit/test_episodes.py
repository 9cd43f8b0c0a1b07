"""Alarm episodes: hysteresis, minimum duration, cooldown, flap suppression, escalation, and
the same episodes and events however the findings are cut into ticks."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import time
from collections.abc import Sequence

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.episodes import (
    EPISODES_SCHEMA,
    EVENTS_SCHEMA,
    EpisodeParams,
    EpisodePolicy,
    EpisodeStep,
    advance,
    carry,
    episode_id,
)
from analytics.frames import FINDINGS_SCHEMA, SEVERITIES

T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)

PARAMS = EpisodeParams(
    min_duration=15 * MIN,
    clear_after=HOUR,
    cooldown=6 * HOUR,
    escalate_after=24 * HOUR,
    flap_count=3,
    flap_window=24 * HOUR,
    flap_hold=6 * HOUR,
)

Spec = tuple[float, float, str]  # start hour, end hour (after T0), severity


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def findings(
    spans: Sequence[Spec], subject: str = "m1", rule: str = "leak.continuous_flow"
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "subject": [subject] * len(spans),
            "rule": [rule] * len(spans),
            "kind": ["leak"] * len(spans),
            "start": [at(s) for s, _, _ in spans],
            "end": [at(e) for _, e, _ in spans],
            "severity": [sev for _, _, sev in spans],
            "evidence": [f'{{"from_h":{s}}}' for s, _, _ in spans],
            "lead_time_days": [None] * len(spans),
        },
        schema=FINDINGS_SCHEMA,
    )


def no_episodes() -> pl.DataFrame:
    return pl.DataFrame(schema=EPISODES_SCHEMA)


def events(step: EpisodeStep) -> list[tuple[str, float, str]]:
    """(event, hours after T0, severity) in order."""
    return [
        (str(e), (t - T0) / HOUR, str(s))
        for e, t, s in step.events.select("event", "occurred_at", "severity").iter_rows()
    ]


def run_ticks(
    batches: Sequence[tuple[pl.DataFrame, dt.datetime]],
    params: EpisodeParams | EpisodePolicy = PARAMS,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Feed each tick's findings with the state the previous tick left; all events, final state."""
    state = no_episodes()
    emitted = []
    for found, now in batches:
        step = advance(state, found, now, params)
        emitted.append(step.events)
        state = carry(state, step)
    return state, pl.concat(emitted) if emitted else pl.DataFrame(schema=EVENTS_SCHEMA)


def test_schemas_of_the_step() -> None:
    step = advance(no_episodes(), findings([(0, 1, "warning")]), at(1), PARAMS)
    assert step.episodes.schema == EPISODES_SCHEMA
    assert step.events.schema == EVENTS_SCHEMA


def test_a_blip_shorter_than_min_duration_never_opens() -> None:
    blip = findings([(0, 0.1, "critical")])  # 6 minutes, min_duration 15
    step = advance(no_episodes(), blip, at(0.5), PARAMS)
    assert step.events.is_empty()
    assert step.episodes.get_column("state").to_list() == ["pending"]
    # Absent for clear_after: it is dropped, still without an event.
    later = advance(carry(no_episodes(), step), findings([]), at(1.2), PARAMS)
    assert later.events.is_empty()
    assert later.episodes.get_column("state").to_list() == ["dropped"]
    assert carry(carry(no_episodes(), step), later).is_empty()


def test_min_duration_is_reached_across_ticks() -> None:
    state, emitted = run_ticks(
        [(findings([(0, 0.1, "warning")]), at(0.1)), (findings([(0.1, 0.3, "warning")]), at(0.3))]
    )
    assert emitted.select("event", "occurred_at").rows() == [("opened", at(0.25))]
    assert state.get_column("occurrences").to_list() == [2]


def test_hysteresis_gaps_shorter_than_clear_after_do_not_close() -> None:
    # On for 20 min, off for 50 min, again and again: below clear_after, one episode.
    spans = [(h, h + 1 / 3, "warning") for h in range(10)]
    step = advance(no_episodes(), findings(spans), at(9 + 1 / 3), PARAMS)
    assert events(step) == [("opened", 0.25, "warning")]
    (ep,) = step.episodes.iter_rows(named=True)
    assert (ep["state"], ep["occurrences"], ep["last_seen_at"]) == ("open", 10, at(9 + 1 / 3))
    assert ep["evidence"] == '{"from_h":9}'  # the latest finding's


def test_clearing_closes_after_clear_after_of_absence() -> None:
    found = findings([(0, 2, "warning")])
    still = advance(no_episodes(), found, at(2.9), PARAMS)
    assert [e for e, _, _ in events(still)] == ["opened"]
    assert still.episodes.get_column("state").to_list() == ["open"]
    state = carry(no_episodes(), still)
    cleared = advance(state, findings([]), at(3), PARAMS)
    assert events(cleared) == [("closed", 3.0, "warning")]
    (ep,) = cleared.episodes.iter_rows(named=True)
    assert (ep["state"], ep["closed_at"]) == ("closed", at(3))


def test_recurrence_within_cooldown_reopens_the_same_episode() -> None:
    step = advance(no_episodes(), findings([(0, 1, "warning"), (4, 5, "warning")]), at(5), PARAMS)
    assert events(step) == [("opened", 0.25, "warning"), ("closed", 2, "warning"),
                            ("reopened", 4, "warning")]  # fmt: skip
    assert step.events.get_column("episode_id").n_unique() == 1
    (ep,) = step.episodes.iter_rows(named=True)
    assert (ep["state"], ep["reopen_count"], ep["opened_at"]) == ("open", 1, at(0))
    assert ep["episode_id"] == episode_id("m1", "leak.continuous_flow", at(0))


def test_recurrence_after_cooldown_is_a_new_episode() -> None:
    # Closed at 2 h; cooldown 6 h; back at 9 h: a new episode, its own id.
    step = advance(no_episodes(), findings([(0, 1, "warning"), (9, 10, "warning")]), at(10), PARAMS)
    assert [e for e, _, _ in events(step)] == ["opened", "closed", "opened"]
    assert step.episodes.get_column("state").to_list() == ["closed", "open"]
    assert step.episodes.get_column("episode_id").to_list() == [
        episode_id("m1", "leak.continuous_flow", at(0)),
        episode_id("m1", "leak.continuous_flow", at(9)),
    ]


def test_flapping_is_held_open_instead_of_a_storm() -> None:
    # On 30 min every 3 h for two days: each gap (2.5 h) exceeds clear_after and is within
    # the cooldown, so without flap suppression every cycle would close and reopen.
    spans = [(h, h + 0.5, "warning") for h in range(0, 48, 3)]
    step = advance(no_episodes(), findings(spans), at(47.5), PARAMS)
    kinds = [e for e, _, _ in events(step)]
    assert kinds.count("opened") == 1
    assert kinds.count("reopened") == PARAMS.flap_count  # then it is flapping: held open
    assert kinds.count("closed") == PARAMS.flap_count
    (ep,) = step.episodes.iter_rows(named=True)
    assert (ep["state"], ep["flapping"], ep["occurrences"]) == ("open", True, len(spans))
    reopened = step.events.filter(pl.col("event") == "reopened")
    reasons = reopened.get_column("payload").str.json_path_match("$.reason").to_list()
    assert reasons == ["recurrence"] * (PARAMS.flap_count - 1) + ["flapping"]
    # Closes only after flap_hold of absence, once.
    state = carry(no_episodes(), step)
    held = advance(state, findings([]), at(45.5 + 5.9), PARAMS)
    assert held.events.is_empty()
    closed = advance(state, findings([]), at(45.5 + 6), PARAMS)
    # (critical: two days of flapping escalated it by duration at 24 h)
    assert events(closed) == [("closed", 51.5, "critical")]


def test_severity_rise_escalates_once_per_new_peak() -> None:
    spans = [(0, 1, "warning"), (1, 2, "critical"), (2, 3, "warning"), (3, 4, "critical")]
    step = advance(no_episodes(), findings(spans), at(4), PARAMS)
    assert events(step) == [("opened", 0.25, "warning"), ("escalated", 1, "critical")]
    (ep,) = step.episodes.iter_rows(named=True)
    assert (ep["severity"], ep["peak_severity"]) == ("critical", "critical")


def test_an_episode_lasting_past_escalate_after_escalates_once() -> None:
    spans = [(h, h + 1, "info") for h in range(30)]
    step = advance(no_episodes(), findings(spans), at(30), PARAMS)
    assert events(step) == [("opened", 0.25, "info"), ("escalated", 24, "warning")]
    reasons = step.events.get_column("payload").str.json_path_match("$.reason").to_list()
    assert reasons == ["min_duration", "duration"]
    (ep,) = step.episodes.iter_rows(named=True)
    assert (ep["overdue"], ep["severity"], ep["peak_severity"]) == (True, "info", "warning")


def test_one_episode_per_subject_and_rule() -> None:
    found = pl.concat(
        [
            findings([(0, 1, "warning")], subject="m1", rule="a"),
            findings([(0, 1, "warning")], subject="m1", rule="b"),
            findings([(0, 1, "warning")], subject="m2", rule="a"),
        ]
    )
    step = advance(no_episodes(), found, at(1), PARAMS)
    assert step.episodes.select("subject", "rule").rows() == [("m1", "a"), ("m1", "b"), ("m2", "a")]
    assert step.events.height == 3


def test_rule_overrides() -> None:
    nightly = EpisodeParams(
        min_duration=dt.timedelta(0), clear_after=36 * HOUR, escalate_after=None,
        flap_hold=48 * HOUR,
    )  # fmt: skip
    policy = EpisodePolicy(default=PARAMS, by_rule={"leak.night_minimum": nightly})
    nights = [(n * 24 + 2, n * 24 + 4, "warning") for n in range(3)]
    found = pl.concat([findings(nights, rule="leak.night_minimum"), findings(nights, rule="spike")])
    step = advance(no_episodes(), found, at(3 * 24), policy)
    by_rule = step.episodes.group_by("rule").len().sort("rule").rows()
    # Nightly leak: 22 h between nights is within its 36 h clear_after, one episode, open.
    # Spike (defaults): each night closes after 1 h and the next is beyond the 6 h cooldown.
    assert by_rule == [("leak.night_minimum", 1), ("spike", 3)]
    night = step.events.filter(pl.col("rule") == "leak.night_minimum")
    assert night.select("event", "occurred_at").rows() == [("opened", at(2))]  # no min_duration
    spike = step.events.filter(pl.col("rule") == "spike").get_column("event").to_list()
    assert spike == ["opened", "closed"] * 3


def test_rerunning_a_tick_emits_nothing_twice() -> None:
    found = findings([(0, 1, "warning"), (1, 2, "critical")])
    first = advance(no_episodes(), found, at(2), PARAMS)
    state = carry(no_episodes(), first)
    again = advance(state, found, at(2), PARAMS)
    assert again.events.is_empty()
    assert again.episodes.is_empty()  # nothing touched


def test_same_input_same_output_whatever_the_row_order() -> None:
    spans = [(h * 0.7, h * 0.7 + 0.4, SEVERITIES[h % 3]) for h in range(40)]
    found = pl.concat([findings(spans, subject=s) for s in ("m2", "m1", "m3")])
    a = advance(no_episodes(), found, at(40), PARAMS)
    b = advance(no_episodes(), found.sample(fraction=1.0, shuffle=True, seed=7), at(40), PARAMS)
    assert a.episodes.equals(b.episodes)
    assert a.events.equals(b.events)
    assert a.events.get_column("event_id").n_unique() == a.events.height


def cut(spans: Sequence[Spec], ticks: Sequence[float]) -> list[list[Spec]]:
    """Findings as a detector running at each tick reports them: every condition split at the
    tick boundaries, each piece delivered at the first tick at or after its end."""
    out: list[list[Spec]] = [[] for _ in ticks]
    for start, end, sev in spans:
        for i, t in enumerate(ticks):
            lo = ticks[i - 1] if i else None
            if start > t or (lo is not None and end <= lo):
                continue  # not seen by this tick, or reported whole by an earlier one
            out[i].append((start if lo is None else max(start, lo), min(end, t), sev))
    return out


span_strategy = st.tuples(st.integers(0, 95), st.integers(0, 12), st.sampled_from(SEVERITIES)).map(
    lambda s: (s[0] / 4, (s[0] + s[1]) / 4, s[2])
)


@settings(max_examples=150, deadline=None)
@given(
    spans=st.lists(span_strategy, max_size=25),
    cuts=st.lists(st.integers(1, 95), max_size=8, unique=True),
    flap_count=st.integers(1, 4),
    min_minutes=st.sampled_from([0, 30, 90]),
)
def test_ticks_do_not_change_episodes(
    spans: list[Spec], cuts: list[int], flap_count: int, min_minutes: int
) -> None:
    """One call over all findings, or one call per tick over what each tick saw: the same
    episodes and the same events (ids, instants, severities)."""
    params = EpisodeParams(
        min_duration=min_minutes * MIN, clear_after=HOUR, cooldown=4 * HOUR,
        escalate_after=8 * HOUR, flap_count=flap_count, flap_window=12 * HOUR,
        flap_hold=3 * HOUR,
    )  # fmt: skip
    ticks = [*sorted(c / 4 for c in cuts), 30.0]
    pieces = cut(spans, ticks)
    batch_found = findings([p for piece in pieces for p in piece])
    once = advance(no_episodes(), batch_found, at(ticks[-1]), params)
    state, emitted = run_ticks([(findings(p), at(t)) for p, t in zip(pieces, ticks, strict=True)],
                               params)  # fmt: skip
    key = ["event_id", "event", "occurred_at", "severity", "episode_id"]
    assert (
        emitted.select(key)
        .sort("occurred_at", "event_id")
        .equals(once.events.select(key).sort("occurred_at", "event_id"))
    )
    final = carry(no_episodes(), once)
    cols = ["episode_id", "state", "opened_at", "last_seen_at", "closed_at", "peak_severity",
            "occurrences", "reopen_count", "flapping", "overdue"]  # fmt: skip
    assert state.select(cols).equals(final.select(cols))
    # Event ids are unique and each episode's events alternate sensibly.
    assert once.events.get_column("event_id").n_unique() == once.events.height
    for _, evs in once.events.group_by("episode_id"):
        seq = [e for e in evs.get_column("event").to_list() if e != "escalated"]
        assert seq[0] == "opened"
        assert all(a != b for a, b in itertools.pairwise(seq))  # no double close/reopen


@pytest.mark.slow
def test_a_hundred_thousand_findings_are_vectorised() -> None:
    rng = random.Random(11)
    n_subjects, per = 1000, 100
    subjects = [f"m{i:04d}" for i in range(n_subjects) for _ in range(per)]
    starts = [rng.uniform(0, 24 * 7) for _ in subjects]
    found = pl.DataFrame(
        {
            "subject": subjects,
            "rule": ["spike.same_hour_of_week"] * len(subjects),
            "kind": ["spike"] * len(subjects),
            "start": [at(s) for s in starts],
            "end": [at(s + 0.25) for s in starts],
            "severity": [SEVERITIES[rng.randrange(3)] for _ in subjects],
            "evidence": ["{}"] * len(subjects),
            "lead_time_days": [None] * len(subjects),
        },
        schema=FINDINGS_SCHEMA,
    )
    t = time.perf_counter()
    step = advance(no_episodes(), found, at(24 * 7), PARAMS)
    elapsed = time.perf_counter() - t
    assert step.episodes.get_column("subject").n_unique() == n_subjects
    assert step.episodes.get_column("occurrences").sum() <= found.height
    assert elapsed < 5.0, f"{elapsed:.2f} s for {found.height} findings"


def test_findings_without_subject_are_ignored_and_missing_evidence_is_empty() -> None:
    found = findings([(0, 1, "warning"), (0, 1, "warning")]).with_columns(
        subject=pl.Series(["m1", None]), evidence=pl.lit(None, pl.String)
    )
    step = advance(no_episodes(), found, at(1), PARAMS)
    assert step.episodes.select("subject", "occurrences", "evidence").rows() == [("m1", 1, "{}")]
    assert step.events.get_column("payload").str.json_path_match("$.evidence").to_list() == ["{}"]
