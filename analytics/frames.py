"""The frames analytics passes between its steps: columns, dtypes and vocabularies, in one place.

Every analytics step is a pure function from frames to frames. The store adapter
(`analytics.store`) and the file mode (`meterward analyze`) produce the same inputs, so a job
over the database and an energy manager's Parquet export give the same numbers.

Inputs

- **readings** (long, one row per reading, as `meterward simulate history` writes them and as
  `readings` holds them): `meter_id, channel, ts, value, quality`. Extra columns are ignored.
  `value` is the register as read (null when the meter did not answer, NaN for a NaN-sentinel
  read); `quality` is the gateway's (`good`, `nan_sentinel`, `comm_error`, `clock_suspect`,
  `out_of_range`).
- **meters** (one row per meter): `meter_id, project, building, kind, load, time_zone`, and
  optionally `counters` (list of `{channel, opening, modulus}`), `replacements` (list of
  `{at, old_serial, new_serial, channel, closing, opening}`; serials are integers from the
  simulators and text from the store, and nothing here reads them), `multiplier` (CT x PT x pulse
  factor, default 1) and `parent_meter_id` (the main meter a sub-meter hangs under).
- **weather** (optional): `project, ts, temperature_c`.

Outputs

- **consumption**: one row per (meter, channel, interval): `meter_id, channel, start, end,
  consumption, quality`. `consumption >= 0` always; `quality` is one of `CONSUMPTION_QUALITY`.
  The one exception is an interval across an unexplained drop: there both are null (no value
  is known, and none is invented), and a counter event says why. Intervals of one stream are
  contiguous and non-overlapping, on the stream's cadence.
- **counter events**: `meter_id, channel, ts, event, detail` with `event` in `COUNTER_EVENTS`.
- **rollups** (`analytics.rollups.ROLLUP_SCHEMA`, keyed by `ROLLUP_KEY`): `level` (meter,
  building, project), `key`, `project`, `channel`, `period` (15min, hour, day, month),
  `bucket_start`/`bucket_end` (UTC instants of the local bounds: a DST day is 23 or 25 h),
  `consumption`, `estimated`, `estimated_share`, `quality` (the worst of the bucket's), `meters`,
  `coverage`, `covered_us`.
- **findings**: `subject, rule, kind, start, end, severity, evidence, lead_time_days`; one row
  per detected condition, `evidence` a canonical JSON object (the values, the baseline, the
  rule's parameters) so a finding explains itself.

Meter and channel ids are strings at the edges; inside a step they may be turned into integer
codes for speed, and must come back as strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import polars as pl

TS: Final = pl.Datetime("us", "UTC")

DType = pl.DataType | type[pl.DataType]


def _schema(fields: dict[str, DType]) -> pl.Schema:
    return pl.Schema(fields)


# Qualities a reading can carry (contracts.wire.Quality, store type reading_quality).
READING_QUALITY: Final = ("good", "nan_sentinel", "comm_error", "clock_suspect", "out_of_range")

# How an interval's consumption was obtained (billing-grade provenance): read from two good
# counter values, spread across a gap by a profile, loaded late by a backfill, or entered.
CONSUMPTION_QUALITY: Final = ("measured", "estimated", "backfilled", "manual")
CONSUMPTION_QUALITY_ENUM: Final = pl.Enum(list(CONSUMPTION_QUALITY))

# Discontinuities consumption tells apart. `unexplained_drop` yields no consumption and a
# finding; `bad_read` is a transient value (zero, NaN, implausible jump that comes back).
COUNTER_EVENTS: Final = ("rollover", "reset", "replacement", "bad_read", "gap", "unexplained_drop")

SEVERITIES: Final = ("info", "warning", "critical")
SEVERITY_ENUM: Final = pl.Enum(list(SEVERITIES))

# Anomaly kinds a finding is scored as (analytics.evaluate maps the simulators' fault kinds
# onto these). A rule names how it was found; a kind names what was found.
FINDING_KINDS: Final = (
    "leak",
    "spike",
    "drop",
    "stuck",
    "comm_loss",
    "rollover",
    "reset",
    "replacement",
    "unexplained_drop",
    "negative_consumption",
    "ct_reversal",
    "phase_loss",
    "voltage_imbalance",
    "balance",
    "degradation",
)

READINGS_SCHEMA: Final = _schema(
    {
        "meter_id": pl.String,
        "channel": pl.String,
        "ts": TS,
        "value": pl.Float64,
        "quality": pl.String,
    }
)

CONSUMPTION_SCHEMA: Final = _schema(
    {
        "meter_id": pl.String,
        "channel": pl.String,
        "start": TS,
        "end": TS,
        "consumption": pl.Float64,
        "quality": CONSUMPTION_QUALITY_ENUM,
    }
)

COUNTER_EVENTS_SCHEMA: Final = _schema(
    {
        "meter_id": pl.String,
        "channel": pl.String,
        "ts": TS,
        "event": pl.Enum(list(COUNTER_EVENTS)),
        "detail": pl.String,
    }
)

FINDINGS_SCHEMA: Final = _schema(
    {
        "subject": pl.String,  # a meter id, or an asset id for equipment rules
        "rule": pl.String,  # e.g. "leak.night_minimum", "spike.same_hour_of_week"
        "kind": pl.Enum(list(FINDING_KINDS)),
        "start": TS,
        "end": TS,  # the last instant the condition was seen
        "severity": SEVERITY_ENUM,
        "evidence": pl.String,  # canonical JSON (see `evidence`)
        "lead_time_days": pl.Float64,  # equipment warnings: estimated days to failure
    }
)


def readings_frame(df: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Any readings frame (simulator enums, store strings) as `READINGS_SCHEMA`, lazily: its
    five columns, `ts` as UTC microseconds, `value` as Float64. Id and quality columns that come
    dictionary-encoded (Enum, Categorical) stay so: as strings they were 2.5x the input's memory
    (191 -> 477 MB on the 10 M-reading benchmark); every step takes either, with the same
    output (`tests/unit/test_pipeline.py`).

    >>> import datetime as dt
    >>> raw = pl.DataFrame({"meter_id": ["m1"], "channel": ["power_w"],
    ...     "ts": [dt.datetime(2026, 1, 5, tzinfo=dt.UTC)], "value": [1.5], "quality": ["good"],
    ...     "unit": ["W"]})
    >>> readings_frame(raw).collect().columns
    ['meter_id', 'channel', 'ts', 'value', 'quality']
    """
    lf = df.lazy()
    schema = lf.collect_schema()

    def ids(name: str) -> pl.Expr:
        encoded = isinstance(schema[name], pl.Enum | pl.Categorical)
        return pl.col(name) if encoded else pl.col(name).cast(pl.String)

    return lf.select(
        ids("meter_id"),
        ids("channel"),
        pl.col("ts").cast(TS),
        pl.col("value").cast(pl.Float64),
        ids("quality"),
    )


def empty(schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def evidence(values: Mapping[str, Any]) -> str:
    """Canonical JSON for a finding's evidence: sorted keys, no spaces, floats rounded to 6
    significant digits, so re-running a detector over the same input gives the same bytes.

    >>> evidence({"threshold_m3h": 0.02, "night_min_m3h": [0.031, 0.0299999999]})
    '{"night_min_m3h":[0.031,0.03],"threshold_m3h":0.02}'
    """
    return json.dumps(_round(values), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _round(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_round(x) for x in v]
    return v
