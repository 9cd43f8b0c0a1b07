"""One analytics pass: readings in; consumption, counter events and findings out.

The scheduled jobs (`analytics.jobs`, over the store) and the file mode (`meterward analyze`,
over an export) run this same pure function, so both give the same numbers for the same
readings.

    result = run_pass(readings, meters, weather=weather)
    result.intervals   # CONSUMPTION_SCHEMA: interval consumption per meter and counter channel
    result.events      # COUNTER_EVENTS_SCHEMA: rollovers, resets, replacements, bad reads, ...
    result.findings    # FINDINGS_SCHEMA: every detector's findings, sorted
    result.rollups     # analytics.rollups.ROLLUP_SCHEMA: 15 min to month, meter to project

Counter events become findings only where someone must act: a device reset (`info`: the
register restarted, which can also be tampering) and an unexplained drop (`warning`: the
interval has no consumption until someone looks). Rollovers and ledger replacements are
routine and stay events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from analytics.consumption import ConsumptionParams, consumption
from analytics.detectors import (
    BalanceParams,
    CommLossParams,
    ElectricalParams,
    EquipmentParams,
    LeakParams,
    StuckParams,
    UsageParams,
    detect_balance,
    detect_comm_loss,
    detect_electrical,
    detect_equipment,
    detect_leak,
    detect_stuck,
    detect_usage,
)
from analytics.detectors.common import concat_findings
from analytics.frames import FINDINGS_SCHEMA, SEVERITY_ENUM, evidence, readings_frame
from analytics.rollups import rollup

# Counter events that are findings, with their severity.
_EVENT_FINDINGS = {"reset": "info", "unexplained_drop": "warning"}


@dataclass(frozen=True, slots=True)
class PassParams:
    """Every step's tuning, defaults throughout."""

    consumption: ConsumptionParams = field(default_factory=ConsumptionParams)
    leak: LeakParams = field(default_factory=LeakParams)
    usage: UsageParams = field(default_factory=UsageParams)
    stuck: StuckParams = field(default_factory=StuckParams)
    comm_loss: CommLossParams = field(default_factory=CommLossParams)
    electrical: ElectricalParams = field(default_factory=ElectricalParams)
    balance: BalanceParams = field(default_factory=BalanceParams)
    equipment: EquipmentParams = field(default_factory=EquipmentParams)
    rollups: bool = True  # the scheduled intraday tick refreshes rollups on its own cadence
    equipment_warnings: bool = True  # day-scale trends: the scheduled daily job's, not intraday


@dataclass(frozen=True, slots=True)
class PassResult:
    intervals: pl.DataFrame
    events: pl.DataFrame
    findings: pl.DataFrame
    rollups: pl.DataFrame  # analytics.rollups.ROLLUP_SCHEMA; empty when params.rollups is off


def run_pass(
    readings: pl.DataFrame | pl.LazyFrame,
    meters: pl.DataFrame,
    *,
    weather: pl.DataFrame | None = None,
    params: PassParams | None = None,
) -> PassResult:
    """Consumption, counter events, rollups and every detector's findings over `readings`.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 5, 0, m, tzinfo=dt.UTC) for m in (0, 15, 30, 45)]
    >>> readings = pl.DataFrame({"meter_id": "m1", "channel": "energy_import_kwh", "ts": t,
    ...     "value": [10.0, 11.0, 0.5, 1.5], "quality": "good"})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "project": ["p"], "building": ["b"],
    ...     "kind": ["electricity"], "load": ["household"], "time_zone": ["Asia/Shanghai"]})
    >>> out = run_pass(readings, meters)
    >>> out.intervals["consumption"].to_list()
    [1.0, 1.0, 1.0]
    >>> out.findings.select("subject", "kind", "severity").rows()
    [('m1', 'reset', 'info')]
    """
    p = PassParams() if params is None else params
    frame = readings_frame(readings).collect()
    counted = consumption(frame, meters, params=p.consumption)
    intervals = counted.intervals
    parts = [
        detect_leak(frame, intervals, meters, params=p.leak, weather=weather),
        detect_usage(frame, intervals, meters, params=p.usage, weather=weather),
        detect_stuck(frame, intervals, meters, params=p.stuck, weather=weather),
        detect_comm_loss(frame, intervals, meters, params=p.comm_loss, weather=weather),
        detect_electrical(frame, intervals, meters, params=p.electrical),
        detect_balance(frame, intervals, meters, params=p.balance),
        detect_equipment(frame, intervals, meters, params=p.equipment)
        if p.equipment_warnings
        else pl.DataFrame(schema=FINDINGS_SCHEMA),
        event_findings(counted.events),
    ]
    del frame  # the largest frame of the pass; the rollups need only the intervals
    # An interval across an unexplained drop has no value: it is not summed into any bucket
    # (the bucket's coverage shows the hole).
    valued = intervals.filter(pl.col("consumption").is_not_null())
    rollups = rollup(valued if p.rollups else valued.clear(), meters)
    return PassResult(intervals, counted.events, concat_findings(parts), rollups)


def event_findings(events: pl.DataFrame) -> pl.DataFrame:
    """Counter events someone must act on, as findings: one per (meter, event, instant), the
    channels it touched in the evidence.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    >>> ev = pl.DataFrame({"meter_id": ["m1", "m1"], "channel": ["energy_import_kwh",
    ...     "energy_export_kwh"], "ts": [t, t], "event": ["reset", "reset"],
    ...     "detail": ["25127.7 -> 0.1", "0.0 -> 0.0"]})
    >>> event_findings(ev).select("subject", "rule", "severity", "evidence").row(0)
    ('m1', 'counter.reset', 'info', '{"channels":["energy_export_kwh","energy_import_kwh"],\
"details":["0.0 -> 0.0","25127.7 -> 0.1"],"rule":"counter.reset"}')
    """
    picked = events.filter(pl.col("event").cast(pl.String).is_in(list(_EVENT_FINDINGS)))
    if picked.is_empty():
        return pl.DataFrame(schema=FINDINGS_SCHEMA)
    grouped = (
        picked.with_columns(pl.col("event").cast(pl.String))
        .sort("meter_id", "event", "ts", "channel")
        .group_by("meter_id", "event", "ts", maintain_order=True)
        .agg(pl.col("channel"), pl.col("detail"))
    )
    rows = grouped.rows(named=True)  # one per event instant: few, and evidence is JSON text
    texts = [
        evidence(
            {
                "rule": f"counter.{r['event']}",
                "channels": list(r["channel"]),
                "details": list(r["detail"]),
            }
        )
        for r in rows
    ]
    return pl.DataFrame(
        {
            "subject": grouped["meter_id"],
            "rule": "counter." + grouped["event"],
            "kind": grouped["event"],
            "start": grouped["ts"],
            "end": grouped["ts"],
            "severity": grouped["event"].replace_strict(_EVENT_FINDINGS).cast(SEVERITY_ENUM),
            "evidence": pl.Series(texts, dtype=pl.String),
            "lead_time_days": pl.Series([None] * grouped.height, dtype=pl.Float64),
        },
        schema=FINDINGS_SCHEMA,
    )
