"""`meterward analyze`: the analytics over files, for energy managers working from exports, and
the accuracy evaluation against the simulators' ground truth.

    meterward analyze consumption --input readings.parquet --output consumption.csv --format csv
    meterward analyze detect --input readings.csv --meters meters.parquet --output findings.json
    meterward analyze evaluate --ledger readings.parquet
    meterward analyze evaluate --scenarios 20 --seed 1 --days 14

The same pure pass (`analytics.pipeline.run_pass`) the scheduled jobs run over the store. Input
readings are as `meterward simulate history` writes them (`meter_id, channel, ts, value,
quality`; other columns ignored), as Parquet or CSV (`ts` parsed as UTC when it carries no
offset). Polars and the analytics are imported inside the commands, so the gateway's install
keeps a light CLI.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import polars as pl

    from analytics.evaluate import Evaluation
    from analytics.pipeline import PassResult

analyze_app = typer.Typer(
    help="Consumption, findings and their accuracy, from readings files (no database).",
    no_args_is_help=True,
)

READING_COLUMNS = ("meter_id", "channel", "ts", "value")  # `quality` optional, see _read_readings
METER_COLUMNS = ("meter_id", "project", "building", "kind", "load", "time_zone")
FAULT_COLUMNS = ("meter_id", "kind", "start", "end", "params")


class Format(StrEnum):
    parquet = "parquet"
    csv = "csv"
    json = "json"


class InputError(Exception):
    """A problem with the user's files: one line, exit 2."""


def _fail(message: str) -> typer.Exit:
    print(f"meterward: error: {message}", file=sys.stderr)  # noqa: T201
    return typer.Exit(2)


@contextmanager
def _input_errors() -> Iterator[None]:
    try:
        yield
    except InputError as exc:
        raise _fail(str(exc)) from None


class _Log:
    """Progress on stderr, one line per step, with its time; silent with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.t0
            print(f"[{elapsed:7.1f} s] {message}", file=sys.stderr, flush=True)  # noqa: T201


# -- reading files -----------------------------------------------------------------------------


def _scan(path: Path, what: str) -> pl.LazyFrame:
    """A Parquet or CSV file, lazily; one-line errors for a missing or unreadable file."""
    import polars as pl  # noqa: PLC0415

    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        if path.suffix.lower() == ".csv":
            lf = pl.scan_csv(path, infer_schema_length=10_000)
        else:
            lf = pl.scan_parquet(path)
        lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise InputError(f"cannot read {what} {path}: {first}") from None
    return lf


def _require(lf: pl.LazyFrame, columns: tuple[str, ...], path: Path, what: str) -> None:
    have = set(lf.collect_schema().names())
    missing = [c for c in columns if c not in have]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise InputError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {names}"
            f" ({what} need {', '.join(columns)})"
        )


def _utc(column: str, lf: pl.LazyFrame, *, strict: bool = True) -> pl.Expr:
    """A timestamp column as UTC microseconds: strings parsed (an offset honoured, none taken as
    UTC), naive datetimes taken as UTC, aware ones converted."""
    import polars as pl  # noqa: PLC0415

    from analytics.frames import TS  # noqa: PLC0415

    dtype = lf.collect_schema()[column]
    col = pl.col(column)
    if dtype == pl.String:
        return col.str.to_datetime(time_unit="us", time_zone="UTC", strict=strict).alias(column)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        return col.dt.replace_time_zone("UTC").cast(TS).alias(column)
    return col.cast(TS).alias(column)


def _read_readings(path: Path) -> pl.DataFrame:
    """Readings in `analytics.frames.READINGS_SCHEMA`. An export without `quality` is read as
    the gateway would have flagged it: `comm_error` where the value is missing, `good`
    elsewhere. A `ts` text that is not a time is named, with its first offending value."""
    import polars as pl  # noqa: PLC0415

    from analytics.frames import READINGS_SCHEMA  # noqa: PLC0415

    lf = _scan(path, "input")
    _require(lf, READING_COLUMNS, path, "readings")
    if "quality" not in lf.collect_schema().names():
        lf = lf.with_columns(
            pl.when(pl.col("value").is_null())
            .then(pl.lit("comm_error"))
            .otherwise(pl.lit("good"))
            .alias("quality")
        )
    text_ts = lf.collect_schema()["ts"] == pl.String
    try:
        df = (
            lf.with_columns(pl.col("ts").alias("ts_text"), _utc("ts", lf, strict=False))
            .select(
                *(pl.col(c).cast(t) for c, t in READINGS_SCHEMA.items()),
                *([pl.col("ts_text")] if text_ts else []),
            )
            .collect()
        )
    except pl.exceptions.PolarsError as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise InputError(f"{path}: {first}") from None
    if text_ts:
        bad = df.filter(pl.col("ts").is_null() & pl.col("ts_text").is_not_null())
        if bad.height:
            raise InputError(
                f"{path}: column 'ts': {bad['ts_text'][0]!r} is not a time"
                " (ISO 8601 expected, e.g. 2026-01-05T00:00:00Z)"
            )
        df = df.drop("ts_text")
    for column in ("meter_id", "channel", "ts"):
        missing = df.get_column(column).null_count()
        if missing:
            raise InputError(f"{path}: column {column!r}: {missing:,} row(s) without a value")
    return df


def _derived_meters(readings: pl.DataFrame, time_zone: str) -> pl.DataFrame:
    """A meters frame from the readings alone, when no meters file is at hand: every meter in
    one project in `time_zone`, its kind guessed from its channels (water volume: water; only
    temperature/humidity: weather; otherwise electricity)."""
    import polars as pl  # noqa: PLC0415

    per_meter = readings.group_by("meter_id").agg(
        (pl.col("channel") == "water_volume_m3").any().alias("water"),
        pl.col("channel").is_in(["temperature_c", "relative_humidity_pct"]).all().alias("weather"),
    )
    return per_meter.select(
        "meter_id",
        pl.lit("default").alias("project"),
        pl.lit(None, pl.String).alias("building"),
        pl.when("water")
        .then(pl.lit("water"))
        .when("weather")
        .then(pl.lit("weather"))
        .otherwise(pl.lit("electricity"))
        .alias("kind"),
        pl.lit(None, pl.String).alias("load"),
        pl.lit(time_zone).alias("time_zone"),
    ).sort("meter_id")


def _beside(path: Path, kind: str) -> Path:
    """readings.parquet -> readings.<kind>.parquet (the simulators' ledger layout)."""
    stem = path.name.removesuffix(path.suffix)
    return path.with_name(f"{stem}.{kind}.parquet")


def _read_meters(
    meters: Path | None, readings_path: Path, readings: pl.DataFrame, time_zone: str
) -> pl.DataFrame:
    import polars as pl  # noqa: PLC0415

    path = meters or _beside(readings_path, "meters")
    if meters is None and not path.is_file():
        return _derived_meters(readings, time_zone)
    lf = _scan(path, "meters file")
    _require(lf, METER_COLUMNS, path, "meters")
    df = _collect(lf.with_columns(pl.col("meter_id").cast(pl.String)), path)
    for zone in df.get_column("time_zone").cast(pl.String).unique().sort().to_list():
        _check_zone(zone, f"{path}: column 'time_zone'")
    zones = df.group_by("project").agg(pl.col("time_zone").n_unique().alias("n"))
    mixed = zones.filter(pl.col("n") > 1).get_column("project").sort().to_list()
    if mixed:
        raise InputError(f"{path}: project {mixed[0]!r} has meters in more than one time zone")
    return df


def _read_weather(weather: Path | None, readings_path: Path) -> pl.DataFrame | None:
    path = weather or _beside(readings_path, "weather")
    if weather is None and not path.is_file():
        return None
    lf = _scan(path, "weather file")
    _require(lf, ("project", "ts", "temperature_c"), path, "weather")
    return _collect(lf.with_columns(_utc("ts", lf)), path)


def _collect(lf: pl.LazyFrame, path: Path) -> pl.DataFrame:
    """Collect a side file, its first error line naming the file (a `ts` that is not a time,
    a column of the wrong type)."""
    import polars as pl  # noqa: PLC0415

    try:
        return lf.collect()
    except pl.exceptions.PolarsError as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise InputError(f"{path}: {first}") from None


def _check_zone(zone: str | None, where: str) -> None:
    """An IANA time zone, or a one-line error naming where it came from."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    try:
        ZoneInfo(zone or "")
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"{where}: {zone!r} is not an IANA time zone") from None


def _write(df: pl.DataFrame, path: Path, fmt: Format) -> None:
    import polars as pl  # noqa: PLC0415

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt is Format.parquet:
            df.write_parquet(path)
        elif fmt is Format.csv:
            df.write_csv(path)
        else:
            df.write_json(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise InputError(f"cannot write {path}: {first}") from None


def _format_of(output: Path, fmt: Format | None) -> Format:
    if fmt is not None:
        return fmt
    try:
        return Format(output.suffix.lower().lstrip("."))
    except ValueError:
        return Format.parquet


# -- the pass ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inputs:
    readings: pl.DataFrame
    meters: pl.DataFrame
    weather: pl.DataFrame | None


def _load(
    input_path: Path, meters: Path | None, weather: Path | None, time_zone: str, log: _Log
) -> _Inputs:
    _check_zone(time_zone, "--time-zone")
    readings = _read_readings(input_path)
    inputs = _Inputs(
        readings,
        _read_meters(meters, input_path, readings, time_zone),
        _read_weather(weather, input_path),
    )
    log(f"read {readings.height:,} readings of {readings['meter_id'].n_unique():,} meters")
    return inputs


def _run_pass(inputs: _Inputs, log: _Log) -> PassResult:
    import polars as pl  # noqa: PLC0415

    from analytics.pipeline import run_pass  # noqa: PLC0415 - heavy, and not on the gateway path

    log("running consumption, rollups and detectors")
    # The readings and meters are checked on reading; what the pass still refuses is about
    # the data (overlapping intervals of a stream, a meter missing from the meters file), so it
    # is reported like any other bad input: one line, exit 2.
    with _input_errors():
        try:
            result = run_pass(inputs.readings, inputs.meters, weather=inputs.weather)
        except (ValueError, pl.exceptions.PolarsError) as exc:
            first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
            raise InputError(f"cannot analyse these readings: {first}") from None
    log(f"{result.intervals.height:,} intervals, {result.findings.height:,} findings")
    return result


InputOption = Annotated[
    Path,
    typer.Option(
        "--input",
        "-i",
        help="Readings, Parquet or CSV (meter_id, channel, ts, value[, quality]).",
        show_default=False,
    ),
]
MetersOption = Annotated[
    Path | None,
    typer.Option(
        help="Meters file (meter_id, project, building, kind, load, time_zone; optionally"
        " counters, replacements, multiplier, parent_meter_id). Default: <input>.meters.parquet"
        " beside the input if present, else one project in --time-zone.",
        show_default=False,
    ),
]
WeatherOption = Annotated[
    Path | None,
    typer.Option(
        help="Weather file (project, ts, temperature_c). Default: <input>.weather.parquet if"
        " present.",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Path, typer.Option("--output", "-o", help="File to write.", show_default=False)
]
FormatOption = Annotated[
    Format | None,
    typer.Option("--format", "-f", help="Output format (default: from --output's suffix)."),
]
ZoneOption = Annotated[
    str, typer.Option(help="Time zone of the meters when no meters file is given.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def _file_mode(  # noqa: PLR0917 - the commands' options
    what: str,
    input_path: Path,
    meters: Path | None,
    weather: Path | None,
    output: Path,
    fmt: Format | None,
    time_zone: str,
    quiet: bool,
) -> None:
    log = _Log(quiet)
    with _input_errors():
        inputs = _load(input_path, meters, weather, time_zone, log)
    result = _run_pass(inputs, log)
    frame: pl.DataFrame = getattr(result, what)
    out_format = _format_of(output, fmt)
    with _input_errors():
        _write(frame, output, out_format)
    log(f"wrote {frame.height:,} rows to {output} ({out_format})")


@analyze_app.command("consumption")
def consumption(  # noqa: PLR0917 - typer options
    input_path: InputOption,
    output: OutputOption,
    meters: MetersOption = None,
    weather: WeatherOption = None,
    fmt: FormatOption = None,
    time_zone: ZoneOption = "UTC",
    quiet: QuietOption = False,
) -> None:
    """Interval consumption per meter and counter channel from cumulative registers.

    Rollovers, resets, replacements, bad reads and gaps are told apart; consumption across a
    gap is the counter delta spread by the meter's profile and flagged `estimated`; never
    negative. Columns: meter_id, channel, start, end, consumption, quality.
    """
    _file_mode("intervals", input_path, meters, weather, output, fmt, time_zone, quiet)


@analyze_app.command("detect")
def detect(  # noqa: PLR0917 - typer options
    input_path: InputOption,
    output: OutputOption,
    meters: MetersOption = None,
    weather: WeatherOption = None,
    fmt: FormatOption = None,
    time_zone: ZoneOption = "UTC",
    quiet: QuietOption = False,
) -> None:
    """Findings: leaks, spikes and drops, stuck meters, communication loss, CT reversal, phase
    loss, meter balance and equipment degradation, each with its evidence and severity.

    Columns: subject, rule, kind, start, end, severity, evidence (JSON), lead_time_days.
    """
    _file_mode("findings", input_path, meters, weather, output, fmt, time_zone, quiet)


# -- evaluation --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ledger:
    readings: Path
    faults: Path
    meters: Path
    weather: Path


def _ledger_paths(ledger: Path) -> _Ledger:
    """The ledger's files from its faults file or its readings file."""
    name = ledger.name
    if name.endswith(".faults.parquet"):
        readings = ledger.with_name(name.removesuffix(".faults.parquet") + ".parquet")
    else:
        readings = ledger
    return _Ledger(
        readings,
        _beside(readings, "faults"),
        _beside(readings, "meters"),
        _beside(readings, "weather"),
    )


def _check_ledger(paths: _Ledger) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The ledger's faults and readings (with true_value), or an InputError naming the gap."""
    faults = _scan(paths.faults, "ledger faults file")
    _require(faults, FAULT_COLUMNS, paths.faults, "ledger faults")
    truth = _scan(paths.readings, "ledger readings")
    _require(truth, (*READING_COLUMNS, "quality", "true_value"), paths.readings, "ledger readings")
    return faults, truth


@dataclass(frozen=True, slots=True)
class _Rules:
    """The evaluation's matching knobs (see analytics.evaluate)."""

    tolerance: dt.timedelta
    comm_loss_polls: int
    cycle_resolution: dt.timedelta


def _evaluate_one(
    ledger: Path, input_path: Path | None, *, scenario: str, rules: _Rules, log: _Log
) -> Evaluation:
    from analytics.evaluate import evaluate  # noqa: PLC0415

    paths = _ledger_paths(ledger)
    faults_lf, truth_lf = _check_ledger(paths)
    source = input_path or paths.readings
    meters = paths.meters if paths.meters.is_file() else None
    weather = paths.weather if paths.weather.is_file() else None
    inputs = _load(source, meters, weather, "UTC", log)
    result = _run_pass(inputs, log)
    log("scoring against the ledger")
    return evaluate(
        faults=faults_lf.collect(),
        readings=truth_lf,
        findings=result.findings,
        intervals=result.intervals,
        events=result.events,
        meters=inputs.meters,
        scenario=scenario,
        tolerance=rules.tolerance,
        comm_loss_polls=rules.comm_loss_polls,
        cycle_resolution=rules.cycle_resolution,
    )


def _simulate(scenario_toml: Path, out: Path, days: float, interval_s: int, log: _Log) -> None:
    from simulators.history import History  # noqa: PLC0415
    from simulators.scenario import ScenarioError, load_scenario, plan  # noqa: PLC0415

    try:
        run = History(plan(load_scenario(scenario_toml)), days, interval_s)
    except ScenarioError as exc:
        raise InputError(str(exc).splitlines()[0]) from None
    summary = run.write(out)
    log(f"simulated {summary.readings:,} readings, {summary.faults} ledger faults -> {out}")


def _summary_line(name: str, ev: Evaluation) -> str:
    from analytics.evaluate import consumption_summary  # noqa: PLC0415

    k = ev.kinds
    s = consumption_summary(ev.consumption)
    missed = ", ".join(k.filter(k["met"].not_()).get_column("kind").to_list()) or "none"
    return (
        f"{name}: faults {int(k['expected'].sum())}, found {int(k['found'].sum())},"
        f" false positives {int(k['false_positive'].sum())}, negative intervals"
        f" {s['negative_intervals']}, consumption within 0.1%: {s['within']} of {s['scored']};"
        f" targets missed: {missed}"
    )


@analyze_app.command("evaluate")
def evaluate_cmd(  # noqa: PLR0917 - typer options
    ledger: Annotated[
        Path | None,
        typer.Option(
            help="The simulators' ledger: a readings Parquet file with .faults/.meters/.weather"
            " beside it, or its .faults.parquet.",
            show_default=False,
        ),
    ] = None,
    input_path: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="Readings to analyse, if not the ledger's own (e.g. a CSV export of them).",
            show_default=False,
        ),
    ] = None,
    scenarios: Annotated[
        int,
        typer.Option(
            min=0, help="Also generate and evaluate this many random fault scenarios (see --base)."
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the first random scenario (then +1 ...).")] = 1,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Scenario whose fleet the random scenarios use"
            " (default: the shipped scenarios/residential-small.toml).",
            show_default=False,
        ),
    ] = None,
    scenario_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--scenario",
            "-s",
            help="Also simulate and evaluate this scenario file (repeatable).",
            show_default=False,
        ),
    ] = None,
    days: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Days to simulate for --scenario/--scenarios (random scenarios need at least 7:"
            " a baseline before the faults and room after them).",
        ),
    ] = 14.0,
    interval: Annotated[str, typer.Option(help="Reading interval when simulating.")] = "15m",
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Keep generated scenarios and histories here (default: a temporary folder).",
            show_default=False,
        ),
    ] = None,
    tolerance: Annotated[
        str, typer.Option(help="Slack around a fault's time range when matching detections.")
    ] = "1h",
    comm_loss_polls: Annotated[
        int,
        typer.Option(
            min=1, help="Consecutive lost polls a device fault must cause to be expected."
        ),
    ] = 2,
    cycle_resolution: Annotated[
        str,
        typer.Option(
            help="Polling that resolves a pump's starts: short-cycling alone is expected only"
            " on meters read at least this often."
        ),
    ] = "1m",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also write the per-kind table here, and beside it every expected fault with"
            " its match (<name>.faults.<format>), every detection with its status (tp,"
            " explained, fp: <name>.detections.<format>) and the per-stream consumption error"
            " (<name>.consumption.<format>).",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOption = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when any accuracy target is missed.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Precision, recall and median time-to-detect per anomaly kind, degradation detected
    before failure, and consumption error, against the simulators' ground-truth ledger.

    Evaluates --ledger, each --scenario (simulated for --days), and --scenarios random fault
    scenarios built on --base's fleet (every fault kind at random meters, times and parameters,
    from --seed), then prints one table over all of them. See analytics/evaluate.py for the
    matching rules.
    """
    from analytics.evaluate import combine, format_report  # noqa: PLC0415
    from simulators.random_scenario import MIN_RANDOM_DAYS  # noqa: PLC0415
    from simulators.scenario import parse_duration  # noqa: PLC0415

    if input_path is not None and ledger is None:
        raise _fail("--input needs --ledger (the ground truth of those readings)")
    if ledger is None and not scenarios and not scenario_files:
        raise _fail("give --ledger, --scenario or --scenarios")
    try:
        rules = _Rules(
            dt.timedelta(seconds=parse_duration(tolerance)),
            comm_loss_polls,
            dt.timedelta(seconds=parse_duration(cycle_resolution)),
        )
        interval_s = parse_duration(interval)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if interval_s <= 0:
        raise _fail("--interval must be positive")
    if scenarios and days < MIN_RANDOM_DAYS:
        raise _fail(f"--days must be at least {MIN_RANDOM_DAYS:g} for random scenarios")
    log = _Log(quiet)
    results: list[tuple[str, Evaluation]] = []
    with _input_errors(), tempfile.TemporaryDirectory(prefix="mw-evaluate-") as tmp:
        if ledger is not None:
            _check_ledger(_ledger_paths(ledger))  # before any work, and any progress line
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        jobs = _evaluation_jobs(
            ledger, scenario_files or [], scenarios, seed, base or _default_base(), days, work
        )
        for n, (name, make) in enumerate(jobs, start=1):
            log(f"[{n}/{len(jobs)}] {name}")
            path = make(interval_s, log)
            ev = _evaluate_one(
                path,
                input_path if path == ledger else None,
                scenario=name,
                rules=rules,
                log=log,
            )
            results.append((name, ev))
    total = combine([ev for _, ev in results])
    if len(results) > 1:
        for name, ev in results:
            print(_summary_line(name, ev))  # noqa: T201
        print()  # noqa: T201
        print(f"all {len(results)} scenarios:")  # noqa: T201
    print(format_report(total))  # noqa: T201
    if output is not None:
        with _input_errors():
            _write_evaluation(total, output, _format_of(output, fmt))
    if check and not total.targets_met:
        raise typer.Exit(1)


def _write_evaluation(total: Evaluation, output: Path, out_format: Format) -> None:
    """The per-kind table at `output`, the per-fault, per-detection and per-stream frames
    beside it."""
    _write(total.kinds, output, out_format)
    stem = output.name.removesuffix(output.suffix)
    for part in ("faults", "detections", "consumption"):
        _write(getattr(total, part), output.with_name(f"{stem}.{part}.{out_format}"), out_format)


def _default_base() -> Path:
    """The shipped residential scenario: from the working folder, else beside the package."""
    relative = Path("scenarios") / "residential-small.toml"
    if relative.is_file():
        return relative
    return Path(__file__).resolve().parents[1] / relative


def _evaluation_jobs(  # noqa: PLR0917 - the command's options, passed on
    ledger: Path | None,
    scenario_files: list[Path],
    count: int,
    seed: int,
    base: Path,
    days: float,
    work: Path,
) -> list[tuple[str, Any]]:
    """(name, make) per evaluation; make(interval_s, log) returns the ledger path to score."""
    import tomllib  # noqa: PLC0415

    from simulators.random_scenario import random_scenario, to_toml  # noqa: PLC0415

    jobs: list[tuple[str, Any]] = []
    if ledger is not None:
        name = _ledger_paths(ledger).readings.name.removesuffix(".parquet")
        jobs.append((name, lambda _i, _log: ledger))
    for path in scenario_files:
        if not path.is_file():
            raise InputError(f"scenario not found: {path}")

        def shipped(interval_s: int, log: _Log, path: Path = path) -> Path:
            out = work / f"{path.stem}.parquet"
            _simulate(path, out, days, interval_s, log)
            return out

        jobs.append((path.stem, shipped))
    if count:
        if not base.is_file():
            raise InputError(f"base scenario not found: {base}")
        try:
            base_doc = tomllib.loads(base.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{base}: invalid TOML: {exc}") from None
    for s in range(seed, seed + count):

        def generated(interval_s: int, log: _Log, s: int = s) -> Path:
            try:
                doc = random_scenario(base_doc, s, days=days)
            except ValueError as exc:
                raise InputError(f"{base}: {str(exc).splitlines()[0]}") from None
            toml = work / f"random-{s}.toml"
            toml.write_text(to_toml(doc), encoding="utf-8")
            out = work / f"random-{s}.parquet"
            _simulate(toml, out, days, interval_s, log)
            return out

        jobs.append((f"{base.stem}-random-{s}", generated))
    return jobs
