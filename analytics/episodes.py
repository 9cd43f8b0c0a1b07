"""Alarm episodes: detector findings, tick after tick, become episodes a person can act on.

A detector says "this condition holds now" every time it runs. Sent straight to people, that is
an alarm storm: the same leak every 15 minutes, a meter on the edge of a threshold opening and
closing twenty times a day. An episode is the one thing a maintenance team should hear about
per (subject, rule), with a life of its own:

- **pending** while the condition has not yet lasted `min_duration` (a blip never pages
  anyone; a pending episode that clears is dropped without a trace in the outbox);
- **open** once it has; findings that follow within `clear_after` of the last one extend it
  (time hysteresis: the condition must be *absent* for `clear_after` to clear, not merely
  below threshold for one tick);
- **closed** at `last_seen_at + clear_after` once that much absence is confirmed;
- **reopened** (the same episode, same id) when the condition comes back within `cooldown` of
  the close; later than that, a new episode begins;
- **escalated** when its severity rises above its peak so far, and once when the condition
  has lasted `escalate_after` (the peak rises one level, capped at critical);
- **flapping** after `flap_count` reopenings within `flap_window`: from then on it closes only
  after `flap_hold` of absence, so an oscillating condition stays one open episode instead of a
  storm of close/reopen events.

Every instant is *data time* (the findings' own `start`/`end`), never the tick's wall clock;
`now` only says up to when absence is confirmed. So the same findings give the same episodes
and events whether they arrive in one call or spread over many ticks, and re-running a tick is
harmless: findings that end at or before an episode's `last_seen_at` are already in it.

Ids are content-derived: an episode's is uuid5 of `subject|rule|opened_at`, an event's uuid5 of
`episode|event|occurred_at|severity|reason`, so the store's outbox can insert events with
`ON CONFLICT DO NOTHING` and a re-run emits nothing twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

import polars as pl

from analytics.frames import FINDINGS_SCHEMA, SEVERITIES, SEVERITY_ENUM, TS, DType

EPISODE_STATES: Final = ("pending", "open", "closed", "dropped")
EPISODE_EVENTS: Final = ("opened", "escalated", "closed", "reopened")
_KIND: Final = FINDINGS_SCHEMA["kind"]

_EPISODE_FIELDS: dict[str, DType] = {
    "episode_id": pl.String,
    "subject": pl.String,
    "rule": pl.String,
    "kind": _KIND,
    "state": pl.Enum(list(EPISODE_STATES)),
    "opened_at": TS,  # when the condition began (the first finding's start)
    "last_seen_at": TS,  # the last instant a finding saw it
    "closed_at": TS,  # null unless closed
    "severity": SEVERITY_ENUM,  # the latest finding's
    "peak_severity": SEVERITY_ENUM,  # the highest so far, duration escalation included
    "occurrences": pl.Int64,  # findings merged into the episode
    "reopen_count": pl.Int32,
    "flaps": pl.Int32,  # reopenings in the current flap window
    "flap_since": TS,  # start of the current flap window
    "flapping": pl.Boolean,
    "overdue": pl.Boolean,  # escalated for lasting `escalate_after`
    "evidence": pl.String,  # the latest finding's evidence (canonical JSON)
    "lead_time_days": pl.Float64,  # the latest finding's
}
EPISODES_SCHEMA: Final = pl.Schema(_EPISODE_FIELDS)

_EVENT_FIELDS: dict[str, DType] = {
    "event_id": pl.String,
    "episode_id": pl.String,
    "event": pl.Enum(list(EPISODE_EVENTS)),
    "occurred_at": TS,
    "subject": pl.String,
    "rule": pl.String,
    "kind": _KIND,
    "severity": SEVERITY_ENUM,
    "payload": pl.String,  # canonical JSON: what a work order needs to explain itself
}
EVENTS_SCHEMA: Final = pl.Schema(_EVENT_FIELDS)

# Fixed namespaces: ids must be the same on every machine and every run.
EPISODE_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "meterward:analytics:alarm-episode")
EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "meterward:analytics:alarm-event")

_US: Final = dt.timedelta(microseconds=1)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CRITICAL: Final = len(SEVERITIES) - 1


@dataclass(frozen=True, slots=True)
class EpisodeParams:
    """Timing of one rule's episodes (defaults suit 15-minute ticks).

    >>> EpisodeParams(clear_after=dt.timedelta(hours=2)).clear_after
    datetime.timedelta(seconds=7200)
    """

    min_duration: dt.timedelta = dt.timedelta(minutes=15)
    clear_after: dt.timedelta = dt.timedelta(hours=1)
    cooldown: dt.timedelta = dt.timedelta(hours=6)
    escalate_after: dt.timedelta | None = dt.timedelta(hours=24)
    flap_count: int = 3
    flap_window: dt.timedelta = dt.timedelta(hours=24)
    flap_hold: dt.timedelta = dt.timedelta(hours=6)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dt.timedelta) and value < dt.timedelta(0):
                raise ValueError(f"{f.name} must not be negative: {value}")
        if self.flap_count < 1:
            raise ValueError(f"flap_count must be at least 1: {self.flap_count}")
        if self.flap_hold < self.clear_after:
            raise ValueError("flap_hold must be at least clear_after")


@dataclass(frozen=True, slots=True)
class EpisodePolicy:
    """Episode timing per rule: `by_rule` overrides `default` for the rules it names.

    >>> policy = EpisodePolicy(by_rule={"leak.night_minimum": EpisodeParams(
    ...     min_duration=dt.timedelta(0), clear_after=dt.timedelta(days=1),
    ...     flap_hold=dt.timedelta(days=2))})
    >>> policy.of("leak.night_minimum").clear_after, policy.of("spike").clear_after
    (datetime.timedelta(days=1), datetime.timedelta(seconds=3600))
    """

    default: EpisodeParams = field(default_factory=EpisodeParams)
    by_rule: Mapping[str, EpisodeParams] = field(default_factory=dict)

    def of(self, rule: str) -> EpisodeParams:
        return self.by_rule.get(rule, self.default)


@dataclass(frozen=True, slots=True)
class EpisodeStep:
    """What one tick did: every episode it touched (`EPISODES_SCHEMA`; state `dropped` for a
    pending episode that cleared before opening, which the store deletes) and the events it
    emitted (`EVENTS_SCHEMA`), both in a deterministic order."""

    episodes: pl.DataFrame
    events: pl.DataFrame


def episode_id(subject: str, rule: str, opened_at: dt.datetime) -> str:
    """The id of the episode of `rule` on `subject` that began at `opened_at`.

    >>> at = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> episode_id("m1", "leak.continuous_flow", at)
    'b942b714-e060-5ec9-baaf-9f0c0aa11963'
    >>> episode_id("m1", "leak.continuous_flow", at + dt.timedelta(hours=1)) != _
    True
    """
    return _episode_id(subject, rule, _micros(opened_at))


def advance(
    episodes: pl.DataFrame,
    findings: pl.DataFrame,
    now: dt.datetime,
    params: EpisodeParams | EpisodePolicy | None = None,
) -> EpisodeStep:
    """Advance the episodes of one project by one tick's findings, up to `now`.

    `episodes` is the current state (`EPISODES_SCHEMA`): every pending or open episode, and the
    closed ones whose cooldown may still matter; `findings` (`FINDINGS_SCHEMA`) is what the
    detectors found since. Findings that start after `now` are ignored.

    >>> t = lambda h: dt.datetime(2026, 1, 5, h, tzinfo=dt.UTC)
    >>> found = pl.DataFrame({"subject": ["m1", "m1"], "rule": ["leak.continuous_flow"] * 2,
    ...     "kind": ["leak", "leak"], "start": [t(0), t(1)], "end": [t(1), t(2)],
    ...     "severity": ["warning", "critical"], "evidence": ['{"flow":1}', '{"flow":2}'],
    ...     "lead_time_days": [None, None]}, schema=FINDINGS_SCHEMA)
    >>> step = advance(pl.DataFrame(schema=EPISODES_SCHEMA), found, t(6))
    >>> step.events.select("event", pl.col("occurred_at").dt.strftime("%H:%M"), "severity").rows()
    ... # doctest: +NORMALIZE_WHITESPACE
    [('opened', '00:15', 'warning'), ('escalated', '01:00', 'critical'),
     ('closed', '03:00', 'critical')]
    >>> step.episodes.select("state", "occurrences", "evidence").row(0)
    ('closed', 2, '{"flow":2}')
    """
    policy = (
        params if isinstance(params, EpisodePolicy) else EpisodePolicy(params or EpisodeParams())
    )
    now_us = _micros(now)
    state = _conform(episodes, EPISODES_SCHEMA)
    current = _current(state)
    runs = _runs(_conform(findings, FINDINGS_SCHEMA), current, policy, now_us)

    machine = _Machine(policy, now_us)
    by_key: dict[tuple[str, str], list[_Run]] = {}
    for row in runs.iter_rows():
        run = _Run(*row[2:])
        by_key.setdefault((row[0], row[1]), []).append(run)
    currents = {(e.subject, e.rule): e for e in _episodes_of(current)}
    before = {e.episode_id: e for e in currents.values()}
    for key in sorted(by_key.keys() | {k for k, e in currents.items() if e.state != "closed"}):
        machine.run(key, currents.get(key), by_key.get(key, []))

    touched = [e for e in machine.episodes.values() if before.get(e.episode_id) != e]
    touched.sort(key=lambda e: (e.subject, e.rule, e.opened_at))
    machine.events.sort(key=lambda ev: ev[:4])
    return EpisodeStep(_episodes_frame(touched), _events_frame(machine.events))


def carry(episodes: pl.DataFrame, step: EpisodeStep) -> pl.DataFrame:
    """The state for the next tick: `episodes` with the step's episodes in place of their old
    rows, dropped ones gone (what the store holds after writing the step, without a store).

    >>> t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> found = pl.DataFrame({"subject": ["m1"], "rule": ["stuck"], "kind": ["stuck"],
    ...     "start": [t], "end": [t + dt.timedelta(hours=1)], "severity": ["warning"],
    ...     "evidence": ["{}"], "lead_time_days": [None]}, schema=FINDINGS_SCHEMA)
    >>> state = pl.DataFrame(schema=EPISODES_SCHEMA)
    >>> state = carry(state, advance(state, found, t + dt.timedelta(hours=1)))
    >>> state.select("state", "occurrences").rows()
    [('open', 1)]
    """
    current = _conform(episodes, EPISODES_SCHEMA)
    touched = step.episodes.get_column("episode_id")
    return (
        pl.concat([current.filter(~pl.col("episode_id").is_in(touched.implode())), step.episodes])
        .filter(pl.col("state") != "dropped")
        .sort(["subject", "rule", "opened_at"])
    )


# --- the vectorised part: findings into runs ---------------------------------------------------


def _conform(df: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    return df.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])


def _current(state: pl.DataFrame) -> pl.DataFrame:
    """Per (subject, rule) the episode a new finding is compared with: the pending or open
    one when there is one (at most one), else the most recently closed."""
    if state.is_empty():
        return state
    active = pl.col("state").is_in(["pending", "open"])
    return (
        state.filter(pl.col("state") != "dropped")
        .with_columns(_active=active)
        .sort(["subject", "rule", "_active", "closed_at", "opened_at"], nulls_last=True)
        .group_by(["subject", "rule"], maintain_order=True)
        .last()
        .drop("_active")
    )


def _runs(
    findings: pl.DataFrame, current: pl.DataFrame, policy: EpisodePolicy, now_us: int
) -> pl.DataFrame:
    """Findings merged per (subject, rule) into runs: stretches in which no gap between one
    finding and the next exceeds the rule's `clear_after`. An episode can only change state
    between runs, so the per-key state machine sees runs, not findings."""
    clear_us = {rule: _td(p.clear_after) for rule, p in policy.by_rule.items()}
    keys = ["subject", "rule"]
    sev = pl.col("severity").to_physical().cast(pl.Int8)
    f = (
        findings.lazy()
        .filter(pl.all_horizontal(pl.col("subject", "rule", "start", "severity").is_not_null()))
        .with_columns(
            evidence=pl.col("evidence").fill_null("{}"),
            start=pl.col("start").dt.epoch("us"),
            end=pl.max_horizontal("start", "end").dt.epoch("us"),
        )
        .filter(pl.col("start") <= now_us)
        .with_columns(end=pl.min_horizontal("end", pl.lit(now_us)))
    )
    if not current.is_empty():
        seen = current.lazy().select(*keys, seen=pl.col("last_seen_at").dt.epoch("us"))
        # Findings that end at or before the episode's last sighting are in it already: a
        # detector re-reporting a window, or a tick run twice.
        f = f.join(seen, on=keys, how="left").filter(
            pl.col("seen").is_null() | (pl.col("end") > pl.col("seen"))
        )
    clear = pl.col("rule").replace_strict(
        clear_us, default=_td(policy.default.clear_after), return_dtype=pl.Int64
    )
    # One total order (ties broken by every column) so the result is the same bytes each run.
    f = f.sort([*keys, "start", "end", "severity", "evidence"], nulls_last=True)
    # A run ends where a finding starts later than `clear_after` after everything before it
    # (of its key) has ended.
    f = f.with_columns(_reach=pl.col("end").cum_max().over(keys), _sev=sev)
    f = f.with_columns(_new=(pl.col("start") > pl.col("_reach").shift(1).over(keys) + clear))
    f = f.with_columns(_run=pl.col("_new").fill_null(True).cum_sum().over(keys))
    latest = ["end", "_sev", "start", "evidence"]
    return (
        f.group_by([*keys, "_run"])
        .agg(
            pl.col("start").min(),
            pl.col("end").max(),
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("kind").sort_by(latest).last().cast(pl.String),
            pl.col("_sev").sort_by(latest).last().alias("last_sev"),
            pl.col("_sev").max().alias("peak"),
            *[
                pl.col("start").filter(pl.col("_sev") >= level).min().alias(f"first_{level}")
                for level in range(len(SEVERITIES))
            ],
            pl.col("evidence").sort_by(latest).last(),
            pl.col("lead_time_days").sort_by(latest).last(),
        )
        .sort([*keys, "_run"])
        .select(
            *keys,
            "start",
            "end",
            "n",
            "kind",
            "last_sev",
            "peak",
            pl.concat_list([f"first_{level}" for level in range(len(SEVERITIES))]).alias("first"),
            "evidence",
            "lead_time_days",
        )
        .collect()
    )


# --- the per-key state machine over runs (few: runs, not findings) ------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    start: int
    end: int
    n: int
    kind: str
    last_sev: int
    peak: int
    first: list[int | None]  # per severity level: the first start at or above it
    evidence: str
    lead_time_days: float | None


@dataclass(slots=True)
class _Episode:
    episode_id: str
    subject: str
    rule: str
    kind: str
    state: str
    opened_at: int
    last_seen_at: int
    closed_at: int | None
    severity: int
    peak: int
    occurrences: int
    reopen_count: int
    flaps: int
    flap_since: int | None
    flapping: bool
    overdue: bool
    evidence: str
    lead_time_days: float | None


# (occurred_at, subject, rule, order, event_id, episode_id, event, kind, severity, payload): the
# first four sort the events; the rest are `EVENTS_SCHEMA` minus what the sort keys hold.
_Event = tuple[int, str, str, int, str, str, str, str, str, str]


class _Machine:
    def __init__(self, policy: EpisodePolicy, now_us: int) -> None:
        self.policy = policy
        self.now = now_us
        self.episodes: dict[str, _Episode] = {}
        self.events: list[_Event] = []

    def run(self, key: tuple[str, str], current: _Episode | None, runs: list[_Run]) -> None:
        p = _Timing.of(self.policy.of(key[1]))
        ep = replace(current) if current is not None else None
        for r in runs:
            if ep is not None and ep.state == "pending" and r.start > ep.last_seen_at + p.clear:
                ep.state = "dropped"  # cleared before it lasted min_duration
                self._keep(ep)
                ep = None
            if ep is not None and ep.state == "open" and r.start > ep.last_seen_at + p.hold(ep):
                self._close(ep, p)
            if ep is not None and ep.state == "closed":
                if ep.closed_at is not None and r.start <= ep.closed_at + p.cooldown:
                    self._reopen(ep, r, p)
                else:
                    self._keep(ep)  # stays closed; the recurrence begins a new episode
                    ep = None
            if ep is None:
                ep = _Episode(
                    _episode_id(key[0], key[1], r.start), key[0], key[1], r.kind, "pending",
                    r.start, r.start, None, r.last_sev, 0, 0, 0, 0, None, False, False,
                    r.evidence, r.lead_time_days,
                )  # fmt: skip
            self._absorb(ep, r, p)
            self._keep(ep)
        if ep is None:
            return
        if ep.state == "pending" and self.now >= ep.last_seen_at + p.clear:
            ep.state = "dropped"
        elif ep.state == "open" and self.now >= ep.last_seen_at + p.hold(ep):
            self._close(ep, p)
        self._keep(ep)

    def _keep(self, ep: _Episode) -> None:
        self.episodes[ep.episode_id] = ep

    def _emit(self, ep: _Episode, event: str, at: int, severity: int, reason: str) -> None:
        sev = SEVERITIES[severity]
        eid = _uuid5(EVENT_NAMESPACE, f"{ep.episode_id}|{event}|{at}|{sev}|{reason}")
        self.events.append(
            (at, ep.subject, ep.rule, len(self.events), eid, ep.episode_id, event, ep.kind, sev,
             _payload(ep, sev, reason))
        )  # fmt: skip

    def _absorb(self, ep: _Episode, r: _Run, p: _Timing) -> None:
        ep.last_seen_at = max(ep.last_seen_at, r.end)
        ep.occurrences += r.n
        ep.kind, ep.severity, ep.evidence, ep.lead_time_days = (
            r.kind, r.last_sev, r.evidence, r.lead_time_days,
        )  # fmt: skip
        levels = [(at, level) for level, at in enumerate(r.first) if at is not None]
        if ep.state == "pending":
            confirmed_at = ep.opened_at + p.min_duration
            if ep.last_seen_at < confirmed_at:
                ep.peak = max(ep.peak, r.peak)
                return
            ep.state = "open"
            # The severity it opens with: the highest seen by the time it was confirmed; what
            # came later in this run is an escalation.
            ep.peak = max([ep.peak, *(level for at, level in levels if at <= confirmed_at)])
            self._emit(ep, "opened", confirmed_at, ep.peak, "min_duration")
            levels = [(at, level) for at, level in levels if at > confirmed_at]
        else:
            confirmed_at = ep.opened_at
        candidates: list[tuple[int, int]] = list(levels)
        if p.escalate_after is not None and not ep.overdue:
            due = ep.opened_at + p.escalate_after
            if ep.last_seen_at >= due:
                candidates.append((max(due, confirmed_at), -1))  # -1: escalation by duration
        for at, level in sorted(candidates, key=lambda c: (c[0], c[1] < 0, c[1])):
            if level < 0:
                ep.overdue = True
                ep.peak = min(ep.peak + 1, _CRITICAL)
                self._emit(ep, "escalated", at, ep.peak, "duration")
            elif level > ep.peak:
                ep.peak = level
                self._emit(ep, "escalated", at, level, "severity")

    def _close(self, ep: _Episode, p: _Timing) -> None:
        ep.state = "closed"
        ep.closed_at = ep.last_seen_at + p.hold(ep)
        self._emit(ep, "closed", ep.closed_at, ep.peak, "flap_hold" if ep.flapping else "cleared")

    def _reopen(self, ep: _Episode, r: _Run, p: _Timing) -> None:
        ep.state = "open"
        ep.closed_at = None
        ep.reopen_count += 1
        if ep.flap_since is None or r.start - ep.flap_since > p.flap_window:
            ep.flap_since, ep.flaps = r.start, 1
        else:
            ep.flaps += 1
        ep.flapping = ep.flapping or ep.flaps >= p.flap_count
        self._emit(ep, "reopened", r.start, ep.peak, "flapping" if ep.flapping else "recurrence")


@dataclass(frozen=True, slots=True)
class _Timing:
    """One rule's `EpisodeParams` in microseconds."""

    min_duration: int
    clear: int
    cooldown: int
    escalate_after: int | None
    flap_count: int
    flap_window: int
    flap_hold: int

    @classmethod
    def of(cls, p: EpisodeParams) -> _Timing:
        esc = None if p.escalate_after is None else _td(p.escalate_after)
        return cls(
            _td(p.min_duration), _td(p.clear_after), _td(p.cooldown), esc, p.flap_count,
            _td(p.flap_window), _td(p.flap_hold),
        )  # fmt: skip

    def hold(self, ep: _Episode) -> int:
        """Absence that closes `ep`: longer once it has shown itself to flap."""
        return self.flap_hold if ep.flapping else self.clear


# --- conversions -------------------------------------------------------------------------------

_TIME_COLUMNS: Final = ("opened_at", "last_seen_at", "closed_at", "flap_since")
_SEV_INDEX: Final = {name: i for i, name in enumerate(SEVERITIES)}


def _episodes_of(current: pl.DataFrame) -> Iterator[_Episode]:
    df = current.with_columns(
        [pl.col(c).dt.epoch("us") for c in _TIME_COLUMNS],
        severity=pl.col("severity").to_physical().cast(pl.Int64),
        peak_severity=pl.col("peak_severity").to_physical().cast(pl.Int64),
        kind=pl.col("kind").cast(pl.String),
        state=pl.col("state").cast(pl.String),
    )
    for row in df.iter_rows(named=True):
        yield _Episode(
            row["episode_id"], row["subject"], row["rule"], row["kind"], row["state"],
            row["opened_at"], row["last_seen_at"], row["closed_at"], row["severity"],
            row["peak_severity"], row["occurrences"], row["reopen_count"], row["flaps"],
            row["flap_since"], bool(row["flapping"]), bool(row["overdue"]), row["evidence"],
            row["lead_time_days"],
        )  # fmt: skip


def _episodes_frame(episodes: list[_Episode]) -> pl.DataFrame:
    columns: dict[str, list[Any]] = {name: [] for name in EPISODES_SCHEMA}
    for e in episodes:
        values = (
            e.episode_id, e.subject, e.rule, e.kind, e.state, e.opened_at, e.last_seen_at,
            e.closed_at, SEVERITIES[e.severity], SEVERITIES[e.peak], e.occurrences,
            e.reopen_count, e.flaps, e.flap_since, e.flapping, e.overdue, e.evidence,
            e.lead_time_days,
        )  # fmt: skip
        for name, value in zip(EPISODES_SCHEMA, values, strict=True):
            columns[name].append(value)
    raw = {
        name: pl.Series(name, values, dtype=pl.Int64 if name in _TIME_COLUMNS else dtype)
        for (name, dtype), values in zip(EPISODES_SCHEMA.items(), columns.values(), strict=True)
    }
    return pl.DataFrame(raw).with_columns([pl.col(c).cast(TS) for c in _TIME_COLUMNS])


def _events_frame(events: list[_Event]) -> pl.DataFrame:
    at, subject, rule, _, eid, episode, event, kind, severity, payload = (
        list(c) for c in zip(*events, strict=True)
    ) if events else ([] for _ in range(10))  # fmt: skip
    return pl.DataFrame(
        {
            "event_id": pl.Series(eid, dtype=pl.String),
            "episode_id": pl.Series(episode, dtype=pl.String),
            "event": pl.Series(event, dtype=EVENTS_SCHEMA["event"]),
            "occurred_at": pl.Series(at, dtype=pl.Int64).cast(TS),
            "subject": pl.Series(subject, dtype=pl.String),
            "rule": pl.Series(rule, dtype=pl.String),
            "kind": pl.Series(kind, dtype=_KIND),
            "severity": pl.Series(severity, dtype=SEVERITY_ENUM),
            "payload": pl.Series(payload, dtype=pl.String),
        }
    )


def _payload(ep: _Episode, severity: str, reason: str) -> str:
    """The event's payload as canonical JSON (sorted keys, no spaces; `frames.evidence`'s
    form), written directly: every value is a known vocabulary word, a number or an instant,
    and the evidence is canonical JSON already."""
    lead = ep.lead_time_days
    lead_json = (
        json.dumps(float(f"{lead:.6g}")) if lead is not None and math.isfinite(lead) else "null"
    )
    closed = "null" if ep.closed_at is None else f'"{_iso(ep.closed_at)}"'
    return (
        f'{{"closed_at":{closed},"evidence":{ep.evidence or "null"},'
        f'"flapping":{"true" if ep.flapping else "false"},"kind":"{ep.kind}",'
        f'"lead_time_days":{lead_json},"opened_at":"{_iso(ep.opened_at)}",'
        f'"peak_severity":"{SEVERITIES[ep.peak]}","reason":"{reason}",'
        f'"reopen_count":{ep.reopen_count},"severity":"{severity}"}}'
    )


def _uuid5(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))` at a fraction of its cost (events can be many).

    >>> _uuid5(EVENT_NAMESPACE, "x") == str(uuid.uuid5(EVENT_NAMESPACE, "x"))
    True
    """
    h = bytearray(hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest())
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h[:16].hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _episode_id(subject: str, rule: str, opened_at_us: int) -> str:
    return _uuid5(EPISODE_NAMESPACE, f"{subject}|{rule}|{opened_at_us}")


def _micros(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError(f"naive datetime {t!r}: episodes run on UTC instants")
    return (t - _EPOCH) // _US


def _td(d: dt.timedelta) -> int:
    return d // _US


def _iso(us: int | None) -> str | None:
    return None if us is None else (_EPOCH + us * _US).isoformat()
