"""How right the analytics are, measured against the simulators' ground-truth ledger.

The simulators write what really happened beside the readings (`simulators.ledger`): one row
per injected fault (`meter_id, kind, start, end, params`) and, per reading, the physical truth
(`true_value`). This module scores a pass of the pipeline against it, so the accuracy targets
of issue 6 are numbers, not impressions:

- per anomaly kind: **precision** (share of detections that name a real fault), **recall**
  (share of faults detected) and **median time-to-detect** (first matching detection's start
  minus the fault's start); for equipment degradation the share **detected before the
  simulated failure date** (fault start + `ramp_days`);
- per (meter, counter channel): **consumption error**, the pipeline's total against
  `true_value(last) - true_value(first)` over the same window, and the count of negative
  intervals (which must be zero).

Scoring rules (decisions, each one a knob below):

- Fault kinds map onto finding kinds (`FAULT_TO_FINDING`). `zero_read` and `nan_read` are scored
  as the counter event `bad_read`, and only when they really spoiled a counter reading (a
  NaN sentinel, or a zero where the truth is not zero: a fault of probability < 1 may hit no
  poll at all); `clock_drift` and `retrofit` have no finding kind of their own.
- **Communication loss** is expected only where the device really went silent: a
  `no_response`, `busy` or `slow` fault (slow only when its delay exceeds the gateway timeout,
  the ledger's `times_out`) whose window overlaps a run of at least `comm_loss_polls` (2)
  consecutive `comm_error` polls on that meter - the silence rule of
  `analytics.detectors.comm_loss`. A `busy` fault of low probability that only lost single
  polls here and there must not count against recall (it is often physically undetectable); a
  detector that still reports it (its intermittent rule) is not wrong either, so such a finding
  is *explained* (see below), neither a hit nor a false positive.
- **Degradation** is expected where the data can show it: a fault that only adds starts
  (`short_cycling_factor`, no `energy_per_cycle_pct`) leaves a pump's energy and run time as
  they were, so on a meter read less often than `cycle_resolution` (1 minute; the pump runs
  minutes at a time) nothing shows it, and it only explains a finding. Its failure date is
  start + `ramp_days`.
- A detection **matches** a fault when it is on the same meter, of the mapped kind, and the time
  ranges overlap once the fault's range is widened by `tolerance` on both sides (an open-ended
  fault runs to the end of the data). Detections are findings (`subject` as the meter) plus,
  optionally, counter events (rollover, reset, replacement, bad_read, unexplained_drop);
  identical (meter, kind, start, end) rows count once, so a reset seen on four counters, or as
  both an event and a finding, is one detection.
- A detection that matches no expected fault is **explained** when it overlaps a ledger fault
  that physically causes what it reports (`EXPLAINED_BY`): a consumption `drop` at an LED
  retrofit or during a CT reversal, a `spike` during a leak, `negative_consumption` at a CT
  reversal, `voltage_imbalance` at a phase loss, `comm_loss` during a reset's or replacement's
  downtime. These are true statements about the meter whose kind has no ground truth of its own;
  they are counted and shown, and left out of precision. Everything else unmatched is a
  **false positive**. A `balance` finding (main meter vs its sub-meters) has no ground truth in
  the simulators and is explained by any fault on its subject, otherwise a false positive.
- **Consumption error** is relative to the truth, with a floor of two register steps (the
  smallest positive change of the stream's reported value): a water meter reading in litres
  over a quiet week cannot be closer to the truth than its own resolution, however right the
  pipeline is. Streams whose register cannot carry the truth are marked `excused` and left out
  of the share-within-target: a CT reversal (the import register stops while energy still
  flows; all the meter's counters, active and reactive, measure through the reversed CTs) and
  a stuck register that resumes from its frozen value (the energy of the stuck period never
  reaches the register).

All functions are pure and deterministic: outputs are sorted by their key columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import polars as pl

from analytics.frames import FINDING_KINDS, TS
from contracts.channels import COUNTERS

DType = pl.DataType | type[pl.DataType]


def _schema(fields: dict[str, DType]) -> pl.Schema:
    return pl.Schema(fields)


# -- vocabularies ------------------------------------------------------------------------------

# Scored kinds: every finding kind plus the counter event for transient bad reads.
SCORED_KINDS: Final = (*FINDING_KINDS, "bad_read")

# The simulators' fault kinds and the kind of detection that should report each. Device faults
# become `comm_loss` only when they really silenced the meter (see the module docstring).
FAULT_TO_FINDING: Final[Mapping[str, str]] = {
    "leak": "leak",
    "spike": "spike",
    "stuck": "stuck",
    "no_response": "comm_loss",
    "busy": "comm_loss",
    "slow": "comm_loss",
    "rollover": "rollover",
    "reset": "reset",
    "replacement": "replacement",
    "degradation": "degradation",
    "ct_reversal": "ct_reversal",
    "phase_loss": "phase_loss",
    "zero_read": "bad_read",
    "nan_read": "bad_read",
}
COMM_FAULTS: Final = frozenset({"no_response", "busy", "slow"})
BAD_READ_FAULTS: Final = frozenset({"zero_read", "nan_read"})

# Finding kind -> fault kinds that physically produce what such a finding reports, so a finding
# overlapping one of them is explained rather than false (see the module docstring).
_ALL_FAULTS: Final = (
    "leak", "spike", "stuck", "zero_read", "nan_read", "rollover", "reset", "replacement",
    "no_response", "busy", "slow", "clock_drift", "degradation", "ct_reversal", "phase_loss",
    "retrofit",
)  # fmt: skip
# Faults after which a meter really shows less consumption (or none read for a while).
_CONSUMPTION_LOWERING: Final = (
    "retrofit", "ct_reversal", "stuck", "phase_loss", "no_response", "busy", "slow", "reset",
    "replacement",
)  # fmt: skip
EXPLAINED_BY: Final[Mapping[str, tuple[str, ...]]] = {
    # (a device fault that did not silence the meter long enough explains a comm_loss too,
    # unless it was a slow answer within the gateway timeout: nothing was lost then)
    "comm_loss": ("reset", "replacement"),
    "drop": _CONSUMPTION_LOWERING,
    "spike": ("leak", "degradation", "stuck"),
    "leak": ("spike",),
    "stuck": ("ct_reversal",),
    "negative_consumption": ("ct_reversal",),
    "voltage_imbalance": ("phase_loss",),
    "unexplained_drop": ("reset", "replacement", "zero_read", "nan_read", "ct_reversal"),
    "bad_read": ("reset", "replacement", "spike"),
    "balance": _ALL_FAULTS,
}

# The issue's targets: precision and recall >= 0.9 for these kinds ...
PR_TARGET_KINDS: Final = ("leak", "stuck", "comm_loss", "rollover", "reset", "replacement", "spike")
PR_TARGET: Final = 0.9
# ... degradation detected before the simulated failure date in >= 80 % of cases ...
BEFORE_FAILURE_TARGET: Final = 0.8
# ... and total consumption within 0.1 % of the ledger, with no negative interval anywhere.
CONSUMPTION_TOLERANCE: Final = 0.001

DEFAULT_TOLERANCE: Final = timedelta(hours=1)
# Consecutive lost polls that make a communication loss (analytics.detectors.comm_loss's
# silence rule uses the same count).
DEFAULT_COMM_LOSS_POLLS: Final = 2
# Readings at most this far apart resolve a pump's starts (it runs minutes at a time).
DEFAULT_CYCLE_RESOLUTION: Final = timedelta(minutes=1)

_DETECTION_EVENTS: Final = ("rollover", "reset", "replacement", "bad_read", "unexplained_drop")

TRUTH_SCHEMA: Final = _schema(
    {
        "scenario": pl.String,
        "fault_id": pl.Int64,
        "meter_id": pl.String,
        "fault_kind": pl.String,
        "kind": pl.String,
        "start": TS,
        "end": TS,
        "deadline": TS,
        "required": pl.Boolean,
    }
)
DETECTIONS_SCHEMA: Final = _schema(
    {
        "scenario": pl.String,
        "meter_id": pl.String,
        "kind": pl.String,
        "start": TS,
        "end": TS,
    }
)
KINDS_SCHEMA: Final = _schema(
    {
        "kind": pl.String,
        "expected": pl.UInt32,
        "found": pl.UInt32,
        "recall": pl.Float64,
        "detections": pl.UInt32,
        "true_positive": pl.UInt32,
        "explained": pl.UInt32,
        "false_positive": pl.UInt32,
        "precision": pl.Float64,
        "median_ttd_h": pl.Float64,
        "before_failure": pl.Float64,
        "target": pl.String,
        "met": pl.Boolean,
    }
)
CONSUMPTION_ERROR_SCHEMA: Final = _schema(
    {
        "scenario": pl.String,
        "meter_id": pl.String,
        "channel": pl.String,
        "start": TS,
        "end": TS,
        "intervals": pl.UInt32,
        "negative": pl.UInt32,
        "consumption": pl.Float64,
        "truth": pl.Float64,
        "abs_error": pl.Float64,
        "rel_error": pl.Float64,
        "resolution": pl.Float64,
        "within": pl.Boolean,
        "excused": pl.String,
    }
)


# -- ground truth ------------------------------------------------------------------------------


def comm_error_runs(
    readings: pl.DataFrame | pl.LazyFrame, meter_ids: Iterable[str]
) -> pl.DataFrame:
    """Runs of consecutive `comm_error` instants per meter: `meter_id, start, end, polls,
    silence`.

    A meter's quality is the same on all its channels at an instant (the device answered or it
    did not), so runs are found on instants. `silence` is the run's length in readings times
    the meter's cadence (median spacing of its instants): two missed 15-minute polls are 30
    minutes of silence, whatever the run's first and last stamps say.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 1, 0, 15 * i, tzinfo=dt.UTC) for i in range(4)]
    >>> r = pl.DataFrame({"meter_id": ["m"] * 4, "channel": ["power_w"] * 4, "ts": t,
    ...     "quality": ["good", "comm_error", "comm_error", "good"]})
    >>> comm_error_runs(r, ["m"]).select("meter_id", "silence").rows()
    [('m', datetime.timedelta(seconds=1800))]
    """
    wanted = sorted(set(meter_ids))
    instants = (
        readings.lazy()
        .select(
            pl.col("meter_id").cast(pl.String),
            pl.col("ts").cast(TS),
            (pl.col("quality").cast(pl.String) == "comm_error").alias("comm"),
        )
        .filter(pl.col("meter_id").is_in(wanted))
        .group_by("meter_id", "ts")
        .agg(pl.col("comm").any())
        # Few meters (those with device faults), so the two-key sort is on a small frame.
        .sort("meter_id", "ts")
        .with_columns(
            (pl.col("ts").diff().median().over("meter_id")).alias("cadence"),
            (pl.col("comm") != pl.col("comm").shift(1))
            .fill_null(True)
            .cum_sum()
            .over("meter_id")
            .alias("run"),
        )
        .filter(pl.col("comm"))
        .group_by("meter_id", "run")
        .agg(
            pl.col("ts").min().alias("start"),
            pl.col("ts").max().alias("end"),
            pl.len().alias("polls"),
            (pl.len().cast(pl.Int64) * pl.col("cadence").first()).alias("silence"),
        )
        .select("meter_id", "start", "end", "polls", "silence")
        .sort("meter_id", "start")
    )
    return instants.collect()


def _with_truth(readings: pl.DataFrame | pl.LazyFrame, *, quality: bool = True) -> pl.LazyFrame:
    """The ledger's readings with string ids and the truth beside each value (`quality` only
    when asked for: the consumption error does not need it, and callers may leave it out)."""
    return readings.lazy().select(
        pl.col("meter_id").cast(pl.String),
        pl.col("channel").cast(pl.String),
        pl.col("ts").cast(TS),
        pl.col("value").cast(pl.Float64),
        *([pl.col("quality").cast(pl.String)] if quality else []),
        pl.col("true_value").cast(pl.Float64),
    )


def _bad_reads_hit(ledger: pl.DataFrame, readings: pl.DataFrame | pl.LazyFrame) -> list[int]:
    """Ids of zero_read / nan_read faults that really spoiled a counter reading (a fault of
    probability < 1 over a short window may hit no poll at all: nothing to detect then)."""
    bad = ledger.filter(pl.col("fault_kind").is_in(list(BAD_READ_FAULTS))).select(
        "fault_id", "meter_id", "start", "end"
    )
    if bad.is_empty():
        return []
    spoiled = (
        _with_truth(readings)
        .filter(
            pl.col("meter_id").is_in(bad.get_column("meter_id").unique().to_list())
            & pl.col("channel").is_in(sorted(COUNTERS))
            & (
                (pl.col("quality") == "nan_sentinel")
                | ((pl.col("value") == 0) & (pl.col("true_value") != 0))
            )
        )
        .join(bad.lazy(), on="meter_id", how="inner")
        .filter(pl.col("ts").is_between(pl.col("start"), pl.col("end"), closed="left"))
        .select("fault_id")
        .unique()
        .collect()
    )
    return sorted(spoiled.get_column("fault_id").to_list())


def _unresolved_cycling(
    ledger: pl.DataFrame, readings: pl.DataFrame | pl.LazyFrame, resolution: timedelta
) -> list[int]:
    """Ids of degradation faults that only add starts (short-cycling, no energy per cycle) on
    a meter read less often than `resolution`: the pump cycles every few minutes, so 15-minute
    samples cannot count its starts, and its energy and run time do not change - nothing in
    the data shows such a fault."""
    cycling = ledger.filter(
        (pl.col("fault_kind") == "degradation")
        & (
            pl.col("params")
            .str.json_path_match("$.energy_per_cycle_pct")
            .cast(pl.Float64)
            .fill_null(0.0)
            == 0.0
        )
    ).select("fault_id", "meter_id")
    if cycling.is_empty():
        return []
    cadence = (
        readings.lazy()
        .select(pl.col("meter_id").cast(pl.String), pl.col("channel").cast(pl.String), "ts")
        .filter(pl.col("meter_id").is_in(cycling.get_column("meter_id").unique().to_list()))
        .group_by("meter_id", "channel")
        .agg(pl.col("ts").sort().diff().median().alias("step"))
        .group_by("meter_id")
        .agg(pl.col("step").min())
        .collect()
    )
    coarse = cycling.join(cadence, on="meter_id", how="left").filter(
        pl.col("step").is_null() | (pl.col("step") > resolution)
    )
    return sorted(coarse.get_column("fault_id").to_list())


def ground_truth(
    faults: pl.DataFrame,
    readings: pl.DataFrame | pl.LazyFrame,
    *,
    horizon: object,
    scenario: str = "",
    comm_loss_polls: int = DEFAULT_COMM_LOSS_POLLS,
    cycle_resolution: timedelta = DEFAULT_CYCLE_RESOLUTION,
) -> pl.DataFrame:
    """What a perfect pipeline reports for a ledger: one row per (fault, finding kind), with
    `required` True for faults recall is scored on and False for faults that only explain a
    detection (`EXPLAINED_BY`). Open faults end at `horizon` (the end of the data). `deadline`
    is the failure date of a degradation (start + ramp_days), else null.

    >>> import datetime as dt
    >>> t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> f = pl.DataFrame({"meter_id": ["w1"], "kind": ["leak"], "start": [t0],
    ...     "end": [t0 + dt.timedelta(days=2)], "params": ['{"flow_m3h":0.03}']})
    >>> r = pl.DataFrame({"meter_id": ["w1"], "channel": ["water_volume_m3"], "ts": [t0],
    ...     "quality": ["good"]})
    >>> truth = ground_truth(f, r, horizon=t0 + dt.timedelta(days=7))
    >>> truth.filter("required").select("kind").item(), sorted(truth.get_column("kind"))
    ('leak', ['balance', 'leak', 'leak', 'spike'])
    """
    ledger = (
        faults.select(
            pl.col("meter_id").cast(pl.String),
            pl.col("kind").cast(pl.String).alias("fault_kind"),
            pl.col("start").cast(TS),
            pl.col("end").cast(TS),
            pl.col("params").cast(pl.String),
        )
        .with_row_index("fault_id")
        .with_columns(
            pl.col("fault_id").cast(pl.Int64),
            pl.col("end").fill_null(pl.lit(horizon).cast(TS)),
            pl.col("params").str.json_path_match("$.times_out").alias("times_out"),
            pl.col("params").str.json_path_match("$.ramp_days").cast(pl.Float64).alias("ramp"),
        )
    )
    comm = ledger.filter(pl.col("fault_kind").is_in(list(COMM_FAULTS)))
    runs = comm_error_runs(readings, comm.get_column("meter_id").to_list())
    silenced = (
        comm.join(runs, on="meter_id", how="inner", suffix="_run")
        .filter(
            (pl.col("start_run") < pl.col("end"))
            & (pl.col("end_run") >= pl.col("start"))
            & (pl.col("polls") >= comm_loss_polls)
        )
        .get_column("fault_id")
        .unique()
        .to_list()
    )
    hit = _bad_reads_hit(ledger, readings)
    unresolved = _unresolved_cycling(ledger, readings, cycle_resolution)
    mapped = pl.col("fault_kind").replace_strict(FAULT_TO_FINDING, default=None)
    required = (
        ledger.with_columns(mapped.alias("kind"))
        .filter(pl.col("kind").is_not_null())
        .with_columns(
            pl.when(pl.col("fault_kind").is_in(list(COMM_FAULTS)))
            .then(pl.col("fault_id").is_in(silenced))
            .when(pl.col("fault_kind").is_in(list(BAD_READ_FAULTS)))
            .then(pl.col("fault_id").is_in(hit))
            .when(pl.col("fault_kind") == "degradation")
            .then(pl.col("fault_id").is_in(unresolved).not_())
            .otherwise(True)
            .alias("required"),
            pl.when(pl.col("fault_kind") == "degradation")
            .then(
                pl.col("start")
                + pl.duration(microseconds=(pl.col("ramp") * 86_400e6).round().cast(pl.Int64))
            )
            .alias("deadline"),
        )
        .filter(pl.col("required"))
    )
    # Every fault also explains detections of the kinds it physically causes; a comm fault that
    # did not silence the meter long enough explains a comm_loss instead of requiring one.
    pairs = [(f, k) for k, fs in EXPLAINED_BY.items() for f in fs]
    explains = pl.DataFrame(
        {"fault_kind": [p[0] for p in pairs], "kind": [p[1] for p in pairs]},
        schema={"fault_kind": pl.String, "kind": pl.String},
    )
    own = ledger.with_columns(mapped.alias("kind")).filter(
        pl.col("kind").is_not_null() & (pl.col("times_out").fill_null("true") != "false")
    )
    optional = (
        ledger.join(explains, on="fault_kind", how="inner")
        .select(own.columns)
        .vstack(own)
        .with_columns(pl.lit(False).alias("required"), pl.lit(None, TS).alias("deadline"))
    )
    out = pl.concat(
        [
            required.with_columns(pl.lit(scenario).alias("scenario")).select(list(TRUTH_SCHEMA)),
            optional.with_columns(pl.lit(scenario).alias("scenario")).select(list(TRUTH_SCHEMA)),
        ]
    )
    return (
        out.unique(["fault_id", "kind", "required"])
        .cast(TRUTH_SCHEMA)
        .sort("fault_id", "kind", pl.col("required"), descending=[False, False, True])
    )


def detections(
    findings: pl.DataFrame,
    events: pl.DataFrame | None = None,
    *,
    scenario: str = "",
) -> pl.DataFrame:
    """Findings (subject as the meter) and, when given, counter events of the scored kinds, as
    one frame of detections `scenario, meter_id, kind, start, end`, each (meter, kind, start,
    end) once.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> ev = pl.DataFrame({"meter_id": ["m", "m"], "channel": ["energy_import_kwh",
    ...     "energy_export_kwh"], "ts": [t, t], "event": ["reset", "reset"], "detail": ["", ""]})
    >>> fi = pl.DataFrame(schema={"subject": pl.String, "kind": pl.String, "start": TS,
    ...     "end": TS})
    >>> detections(fi, ev).select("meter_id", "kind").rows()
    [('m', 'reset')]
    """
    parts = [
        findings.select(
            pl.col("subject").cast(pl.String).alias("meter_id"),
            pl.col("kind").cast(pl.String),
            pl.col("start").cast(TS),
            pl.col("end").cast(TS),
        )
    ]
    if events is not None:
        parts.append(
            events.filter(pl.col("event").cast(pl.String).is_in(_DETECTION_EVENTS)).select(
                pl.col("meter_id").cast(pl.String),
                pl.col("event").cast(pl.String).alias("kind"),
                pl.col("ts").cast(TS).alias("start"),
                pl.col("ts").cast(TS).alias("end"),
            )
        )
    return (
        pl.concat(parts)
        .with_columns(pl.lit(scenario).alias("scenario"))
        .select(list(DETECTIONS_SCHEMA))
        .unique()
        .sort("scenario", "meter_id", "kind", "start", "end")
    )


# -- matching ----------------------------------------------------------------------------------


def match(
    truth: pl.DataFrame, found: pl.DataFrame, tolerance: timedelta = DEFAULT_TOLERANCE
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Match detections to ground truth: (faults, detections).

    `faults` has one row per required truth row with `matched`, `detected_at` (first matching
    detection's start), `ttd_h` (hours from the fault's start to it) and `before_deadline`;
    `detections` has one row per detection with `status` in tp / explained / fp.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    >>> truth = pl.DataFrame({"scenario": [""], "fault_id": [0], "meter_id": ["w"],
    ...     "fault_kind": ["leak"], "kind": ["leak"], "start": [t],
    ...     "end": [t + dt.timedelta(days=1)], "deadline": [None], "required": [True]},
    ...     schema=TRUTH_SCHEMA)
    >>> found = pl.DataFrame({"scenario": [""] * 2, "meter_id": ["w", "w"],
    ...     "kind": ["leak", "leak"],
    ...     "start": [t + dt.timedelta(hours=3), t - dt.timedelta(days=5)],
    ...     "end": [t + dt.timedelta(hours=9), t - dt.timedelta(days=4)]},
    ...     schema=DETECTIONS_SCHEMA)
    >>> faults, dets = match(truth, found)
    >>> faults.select("matched", "ttd_h").rows(), dets.get_column("status").to_list()
    ([(True, 3.0)], ['fp', 'tp'])
    """
    tol = pl.duration(microseconds=int(tolerance / timedelta(microseconds=1)))
    dets = found.with_row_index("det_id")
    pairs = (
        dets.join(truth, on=["scenario", "meter_id", "kind"], how="inner", suffix="_f")
        .filter(
            (pl.col("start") <= pl.col("end_f") + tol) & (pl.col("end") >= pl.col("start_f") - tol)
        )
        .select("det_id", "fault_id", "scenario", "kind", "required", "start")
    )
    hits = pairs.filter(pl.col("required"))
    first = hits.group_by("scenario", "fault_id", "kind").agg(pl.col("start").min().alias("at"))
    faults = (
        truth.filter(pl.col("required"))
        .join(first, on=["scenario", "fault_id", "kind"], how="left")
        .with_columns(
            pl.col("at").is_not_null().alias("matched"),
            pl.col("at").alias("detected_at"),
            ((pl.col("at") - pl.col("start")).dt.total_microseconds() / 3.6e9).alias("ttd_h"),
            pl.when(pl.col("deadline").is_not_null())
            .then(pl.col("at").is_not_null() & (pl.col("at") < pl.col("deadline")))
            .alias("before_deadline"),
        )
        .drop("at", "required")
        .sort("scenario", "fault_id", "kind")
    )
    status = pairs.group_by("det_id").agg(pl.col("required").any().alias("hit"))
    detected = (
        dets.join(status, on="det_id", how="left")
        .with_columns(
            pl.when(pl.col("hit"))
            .then(pl.lit("tp"))
            .when(pl.col("hit").is_not_null())
            .then(pl.lit("explained"))
            .otherwise(pl.lit("fp"))
            .alias("status")
        )
        .drop("det_id", "hit")
        .sort("scenario", "meter_id", "kind", "start", "end")
    )
    return faults, detected


def score_kinds(faults: pl.DataFrame, detected: pl.DataFrame) -> pl.DataFrame:
    """Per kind: expected, found, recall, detections (tp / explained / fp), precision, median
    time-to-detect in hours, share of degradations detected before failure, and whether the
    issue's target for the kind is met (null for kinds without one). Rows: the target kinds
    always, other kinds when they have a fault or a detection; in `SCORED_KINDS` order.

    >>> f = pl.DataFrame({"kind": ["leak"], "matched": [True], "ttd_h": [2.0],
    ...     "before_deadline": [None]}, schema_overrides={"before_deadline": pl.Boolean})
    >>> d = pl.DataFrame({"kind": ["leak", "leak"], "status": ["tp", "fp"]})
    >>> score_kinds(f, d).filter(pl.col("kind") == "leak").select("recall", "precision").rows()
    [(1.0, 0.5)]
    """
    per_fault = faults.group_by("kind").agg(
        pl.len().alias("expected"),
        pl.col("matched").sum().alias("found"),
        pl.col("ttd_h").filter(pl.col("matched")).median().alias("median_ttd_h"),
        pl.col("before_deadline").cast(pl.Float64).mean().alias("before_failure"),
    )
    per_det = detected.group_by("kind").agg(
        pl.len().alias("detections"),
        (pl.col("status") == "tp").sum().alias("true_positive"),
        (pl.col("status") == "explained").sum().alias("explained"),
        (pl.col("status") == "fp").sum().alias("false_positive"),
    )
    present = set(per_fault.get_column("kind")) | set(per_det.get_column("kind"))
    wanted = [k for k in SCORED_KINDS if k in present or k in PR_TARGET_KINDS or k == "degradation"]
    wanted += sorted(present - set(SCORED_KINDS))
    order = pl.DataFrame({"kind": wanted, "order": list(range(len(wanted)))})
    counts = ("expected", "found", "detections", "true_positive", "explained", "false_positive")
    out = (
        order.join(per_fault, on="kind", how="left")
        .join(per_det, on="kind", how="left")
        .with_columns(pl.col(c).fill_null(0).cast(pl.UInt32) for c in counts)
        .with_columns(
            pl.when(pl.col("expected") > 0)
            .then(pl.col("found") / pl.col("expected"))
            .alias("recall"),
            pl.when(pl.col("true_positive") + pl.col("false_positive") > 0)
            .then(pl.col("true_positive") / (pl.col("true_positive") + pl.col("false_positive")))
            .alias("precision"),
        )
    )
    is_pr = pl.col("kind").is_in(list(PR_TARGET_KINDS))
    is_deg = pl.col("kind") == "degradation"
    out = out.with_columns(
        pl.when(is_pr)
        .then(pl.lit(f"precision,recall>={PR_TARGET:g}"))
        .when(is_deg)
        .then(pl.lit(f"before_failure>={BEFORE_FAILURE_TARGET:g}"))
        .alias("target"),
        pl.when(is_pr)
        .then(
            (pl.col("recall").fill_null(1.0) >= PR_TARGET)
            & (pl.col("precision").fill_null(1.0) >= PR_TARGET)
        )
        .when(is_deg)
        .then(pl.col("before_failure").fill_null(1.0) >= BEFORE_FAILURE_TARGET)
        .alias("met"),
    )
    return out.sort("order").select(list(KINDS_SCHEMA)).cast(KINDS_SCHEMA)


# -- consumption -------------------------------------------------------------------------------


def consumption_error(
    intervals: pl.DataFrame,
    readings: pl.DataFrame | pl.LazyFrame,
    faults: pl.DataFrame | None = None,
    *,
    scenario: str = "",
    meters: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Per (meter, counter channel) of the pipeline's intervals: its total consumption against
    the ledger's `true_value` at the last reading minus at the first one inside the intervals'
    window, the count of negative intervals, and whether the error is within 0.1 % (or two
    register steps, whichever is larger). `excused` names why a stream's register cannot carry
    the truth (CT reversal, stuck-and-resume), else null. A `multiplier` column in `meters`
    (CT x PT ratio) scales the truth, as consumption scales the register.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 1, h, tzinfo=dt.UTC) for h in range(3)]
    >>> r = pl.DataFrame({"meter_id": ["m"] * 3, "channel": ["energy_import_kwh"] * 3, "ts": t,
    ...     "value": [10.0, 11.0, 13.0], "quality": ["good"] * 3, "true_value": [10.0, 11.0, 13.0]})
    >>> iv = pl.DataFrame({"meter_id": ["m"] * 2, "channel": ["energy_import_kwh"] * 2,
    ...     "start": t[:2], "end": t[1:], "consumption": [1.0, 2.0]})
    >>> consumption_error(iv, r).select("consumption", "truth", "within").rows()
    [(3.0, 3.0, True)]
    """
    totals = (
        intervals.lazy()
        .select(
            pl.col("meter_id").cast(pl.String),
            pl.col("channel").cast(pl.String),
            pl.col("start").cast(TS),
            pl.col("end").cast(TS),
            pl.col("consumption").cast(pl.Float64),
        )
        .group_by("meter_id", "channel")
        .agg(
            pl.col("start").min(),
            pl.col("end").max(),
            pl.len().alias("intervals"),
            (pl.col("consumption") < 0).sum().alias("negative"),
            pl.col("consumption").sum(),
        )
        .collect()
    )
    streams = totals.select("meter_id", "channel", "start", "end")
    _true = pl.col("true_value").sort_by("ts")
    _steps = pl.col("value").sort_by("ts").diff()
    truth = (
        _with_truth(readings, quality=False)
        .join(streams.lazy(), on=["meter_id", "channel"], how="inner")
        .filter(pl.col("ts").is_between(pl.col("start"), pl.col("end")))
        .group_by("meter_id", "channel")
        .agg(
            (_true.last() - _true.first()).alias("truth"),
            # Smallest positive step of the reported register: its resolution (a float32
            # register's is its spacing at the magnitude it shows).
            _steps.filter(_steps > 0).min().alias("resolution"),
        )
        .collect()
    )
    out = totals.join(truth, on=["meter_id", "channel"], how="left")
    if meters is not None and "multiplier" in meters.columns:
        factor = meters.select(
            pl.col("meter_id").cast(pl.String),
            pl.col("multiplier").cast(pl.Float64).fill_null(1.0).alias("factor"),
        )
        out = out.join(factor, on="meter_id", how="left").with_columns(
            pl.col("truth") * pl.col("factor").fill_null(1.0),
            pl.col("resolution") * pl.col("factor").fill_null(1.0),
        )
    out = out.with_columns(
        (pl.col("consumption") - pl.col("truth")).abs().alias("abs_error"),
        pl.col("resolution").fill_null(0.0),
    ).with_columns(
        pl.when(pl.col("truth") != 0)
        .then(pl.col("abs_error") / pl.col("truth").abs())
        .when(pl.col("abs_error") == 0)
        .then(0.0)
        .otherwise(math.inf)
        .alias("rel_error"),
        (
            pl.col("abs_error")
            <= pl.max_horizontal(
                CONSUMPTION_TOLERANCE * pl.col("truth").abs(), 2.0 * pl.col("resolution")
            )
        )
        .fill_null(False)
        .alias("within"),
    )
    out = out.join(_excused(faults), on=["meter_id", "channel"], how="left").with_columns(
        pl.lit(scenario).alias("scenario")
    )
    return (
        out.select(list(CONSUMPTION_ERROR_SCHEMA))
        .cast(CONSUMPTION_ERROR_SCHEMA)
        .sort("scenario", "meter_id", "channel")
    )


def _excused(faults: pl.DataFrame | None) -> pl.DataFrame:
    """(meter, channel) -> why its register cannot match the truth, from the ledger."""
    schema = {"meter_id": pl.String, "channel": pl.String, "excused": pl.String}
    if faults is None:
        return pl.DataFrame(schema=schema)
    rows: dict[tuple[str, str], str] = {}
    for meter_id, kind, params in faults.select(
        pl.col("meter_id").cast(pl.String), pl.col("kind").cast(pl.String), "params"
    ).iter_rows():
        # A handful of ledger rows, not readings: a loop is the clear way to read their JSON.
        p = json.loads(params or "{}")
        if kind == "ct_reversal":
            # Reversed CTs flip every measured flow: active and reactive, import and export.
            for channel in sorted(COUNTERS):
                rows.setdefault((meter_id, channel), "ct_reversal")
        elif kind == "stuck" and p.get("resume"):
            for channel in p.get("channels", []):
                rows.setdefault((meter_id, str(channel)), "stuck_resume")
    keys = sorted(rows)
    return pl.DataFrame(
        {
            "meter_id": [k[0] for k in keys],
            "channel": [k[1] for k in keys],
            "excused": [rows[k] for k in keys],
        },
        schema=schema,
    )


def consumption_summary(errors: pl.DataFrame) -> dict[str, float | int]:
    """Streams, negative intervals, max relative error and share within target, over streams
    not excused (negatives counted everywhere).

    >>> e = pl.DataFrame({"negative": [0, 0], "rel_error": [0.0002, 0.01],
    ...     "within": [True, False], "excused": [None, "ct_reversal"]})
    >>> s = consumption_summary(e)
    >>> s["streams"], s["excused"], s["negative_intervals"], s["max_rel_error"], s["share_within"]
    (2, 1, 0, 0.0002, 1.0)
    """
    scored = errors.filter(pl.col("excused").is_null())
    n = scored.height
    return {
        "streams": errors.height,
        "scored": n,
        "excused": errors.height - n,
        "within": int(scored.get_column("within").sum()),
        "negative_intervals": int(errors.get_column("negative").sum()),
        "max_rel_error": float(scored.select(pl.col("rel_error").max()).item()) if n else math.nan,
        "share_within": float(scored.select(pl.col("within").mean()).item()) if n else math.nan,
    }


# -- the whole evaluation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A scored pass: per kind (`kinds`), per expected fault (`faults`), per detection
    (`detections`), per counter stream (`consumption`)."""

    kinds: pl.DataFrame
    faults: pl.DataFrame
    detections: pl.DataFrame
    consumption: pl.DataFrame

    @property
    def targets_met(self) -> bool:
        """Every target kind met, no negative interval, every scored stream within 0.1 %."""
        s = consumption_summary(self.consumption)
        kinds_ok = bool(self.kinds.get_column("met").fill_null(True).all())
        streams_ok = s["scored"] == 0 or s["share_within"] == 1.0
        return kinds_ok and s["negative_intervals"] == 0 and streams_ok


def evaluate(
    *,
    faults: pl.DataFrame,
    readings: pl.DataFrame | pl.LazyFrame,
    findings: pl.DataFrame,
    intervals: pl.DataFrame,
    events: pl.DataFrame | None = None,
    meters: pl.DataFrame | None = None,
    scenario: str = "",
    tolerance: timedelta = DEFAULT_TOLERANCE,
    comm_loss_polls: int = DEFAULT_COMM_LOSS_POLLS,
    cycle_resolution: timedelta = DEFAULT_CYCLE_RESOLUTION,
) -> Evaluation:
    """Score one pass (findings, counter events, consumption intervals) against its ledger
    (faults, and readings with `true_value`). See the module docstring for the rules.

    >>> import datetime as dt
    >>> t = [dt.datetime(2026, 1, 1, h, tzinfo=dt.UTC) for h in range(3)]
    >>> r = pl.DataFrame({"meter_id": ["m"] * 3, "channel": ["energy_import_kwh"] * 3, "ts": t,
    ...     "value": [5.0, 6.0, 1.0], "quality": ["good"] * 3, "true_value": [5.0, 6.0, 7.0]})
    >>> f = pl.DataFrame({"meter_id": ["m"], "kind": ["reset"], "start": [t[2]], "end": [t[2]],
    ...     "params": ["{}"]})
    >>> ev = pl.DataFrame({"meter_id": ["m"], "channel": ["energy_import_kwh"], "ts": [t[2]],
    ...     "event": ["reset"], "detail": [""]})
    >>> iv = pl.DataFrame({"meter_id": ["m"] * 2, "channel": ["energy_import_kwh"] * 2,
    ...     "start": t[:2], "end": t[1:], "consumption": [1.0, 1.0]})
    >>> fi = pl.DataFrame(schema={"subject": pl.String, "kind": pl.String, "start": TS,
    ...     "end": TS})
    >>> e = evaluate(faults=f, readings=r, findings=fi, intervals=iv, events=ev)
    >>> e.kinds.filter(pl.col("kind") == "reset").select("recall", "precision").rows()
    [(1.0, 1.0)]
    >>> e.targets_met
    True
    """
    horizon = readings.lazy().select(pl.col("ts").cast(TS).max()).collect().item()
    truth = ground_truth(
        faults,
        readings,
        horizon=horizon,
        scenario=scenario,
        comm_loss_polls=comm_loss_polls,
        cycle_resolution=cycle_resolution,
    )
    found = detections(findings, events, scenario=scenario)
    per_fault, per_det = match(truth, found, tolerance)
    errors = consumption_error(intervals, readings, faults, scenario=scenario, meters=meters)
    return Evaluation(score_kinds(per_fault, per_det), per_fault, per_det, errors)


def combine(evaluations: Sequence[Evaluation]) -> Evaluation:
    """Several scenarios' evaluations as one (their frames carry the scenario name).

    >>> combine([]).kinds.height > 0
    True
    """
    if not evaluations:
        faults = pl.DataFrame(
            schema={**TRUTH_SCHEMA, "matched": pl.Boolean, "detected_at": TS,
                    "ttd_h": pl.Float64, "before_deadline": pl.Boolean}
        )  # fmt: skip
        faults = faults.drop("required")
        dets = pl.DataFrame(schema={**DETECTIONS_SCHEMA, "status": pl.String})
        errors = pl.DataFrame(schema=CONSUMPTION_ERROR_SCHEMA)
    else:
        faults = pl.concat([e.faults for e in evaluations])
        dets = pl.concat([e.detections for e in evaluations])
        errors = pl.concat([e.consumption for e in evaluations])
    return Evaluation(score_kinds(faults, dets), faults, dets, errors)


# -- report ------------------------------------------------------------------------------------


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_report(ev: Evaluation) -> str:
    """The evaluation as a plain-text table: per kind, then consumption error.

    >>> print(format_report(combine([])).splitlines()[0].split())
    ['kind', 'expected', 'found', 'recall', 'detections', 'tp', 'explained', 'fp', 'precision', \
'median_ttd_h', 'before_failure', 'target']
    """
    header = (
        f"{'kind':20}  {'expected':>8}  {'found':>5}  {'recall':>6}  {'detections':>10}  "
        f"{'tp':>2}  {'explained':>9}  {'fp':>2}  {'precision':>9}  {'median_ttd_h':>12}  "
        f"{'before_failure':>14}  target"
    )
    lines = [header]
    for row in ev.kinds.iter_rows(named=True):
        met = {True: "met", False: "MISSED", None: ""}[row["met"]]
        lines.append(
            f"{row['kind']:20}  {row['expected']:>8}  {row['found']:>5}  "
            f"{_num(row['recall'], '.3f'):>6}  {row['detections']:>10}  "
            f"{row['true_positive']:>2}  {row['explained']:>9}  {row['false_positive']:>2}  "
            f"{_num(row['precision'], '.3f'):>9}  {_num(row['median_ttd_h'], '.2f'):>12}  "
            f"{_num(row['before_failure'], '.3f'):>14}  {met}"
        )
    s = consumption_summary(ev.consumption)
    ok = s["negative_intervals"] == 0 and (s["scored"] == 0 or s["share_within"] == 1.0)
    lines += [
        "",
        f"consumption: {s['streams']} counter streams ({s['excused']} excused),"
        f" negative intervals {s['negative_intervals']},"
        f" max relative error {_num(s['max_rel_error'], '.3e')},"
        f" within {CONSUMPTION_TOLERANCE:.1%}: {s['within']} of {s['scored']}"
        f" ({_num(s['share_within'], '.2%')})"
        f"  {'met' if ok else 'MISSED'}",
    ]
    return "\n".join(lines)


__all__ = [
    "EXPLAINED_BY",
    "FAULT_TO_FINDING",
    "Evaluation",
    "combine",
    "comm_error_runs",
    "consumption_error",
    "consumption_summary",
    "detections",
    "evaluate",
    "format_report",
    "ground_truth",
    "match",
    "score_kinds",
]
