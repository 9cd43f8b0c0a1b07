"""`meterward gateway check`: probe every Modbus device of a site once and show what it says.

For commissioning: each channel's decoded value with its unit, whether it is plausible, the
raw words as read, and, when a voltage or frequency is implausible under the configured word
order, the order under which it would be plausible (`planning_orders.suggest_order`). A device
that does not answer shows the failure on each of its channels instead of aborting the check.
Buses are probed in parallel, devices on one bus one after the other, each read once (the
bus's retries apply); after a device's first timeout its other reads are not tried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway_agent.clock import Clock, SystemClock
from gateway_agent.modbus import Line, ModbusError, open_line
from gateway_agent.planning import Read, decode_read, plan_reads
from gateway_agent.planning_orders import (
    judges_order,
    plausible_under,
    suggest_device_order,
    suggest_order,
)
from gateway_agent.poller import LineFactory
from gateway_agent.profiles import ChannelSpec
from gateway_agent.registers import DecodeError, Order, decode
from gateway_agent.site import Device, Site


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One channel of one device as probed."""

    meter_id: str
    bus: str
    unit_id: int
    channel: str
    value: float | None
    unit: str
    plausible: bool | None  # None: no value to judge (no answer, NaN sentinel)
    raw: tuple[int, ...] | None
    quality: str  # good, out_of_range, nan_sentinel, comm_error
    error: str | None = None  # timeout, io, exception_0x02, ... when the read failed
    suggested_order: Order | None = None

    @property
    def ok(self) -> bool:
        return self.quality == "good"


async def check_site(
    site: Site, *, line_factory: LineFactory | None = None, clock: Clock | None = None
) -> list[CheckRow]:
    """Probe every device once; rows in site order (devices, then each profile's channels)."""
    factory = line_factory or open_line
    clock = clock or SystemClock()
    by_bus: dict[str, list[Device]] = {}
    for device in site.devices:
        by_bus.setdefault(device.bus, []).append(device)

    async def probe_bus(name: str, devices: list[Device]) -> dict[str, list[CheckRow]]:
        line = factory(site.buses[name])
        try:
            return {d.meter_id: await probe_device(line, d, clock) for d in devices}
        finally:
            await line.close()

    results = await asyncio.gather(*(probe_bus(n, ds) for n, ds in by_bus.items()))
    rows_by_meter = {m: rows for r in results for m, rows in r.items()}
    return [row for d in site.devices for row in rows_by_meter[d.meter_id]]


async def probe_device(line: Line, device: Device, clock: Clock) -> list[CheckRow]:
    """One device's channels, each read once."""
    reads = plan_reads(device.profile, device.channels, device.max_registers_per_read)
    rows: list[CheckRow] = []
    silent: str | None = None
    for read in reads:
        if silent is not None:  # it did not answer: one timeout per device is enough
            rows.extend(_failed_rows(device, read, silent))
            continue
        got = await _probe_read(line, device, read, clock)
        rows.extend(got)
        if got and got[0].error in ("timeout", "io"):
            silent = got[0].error
    specs = device.profile.channels
    device_order = suggest_device_order([(specs[r.channel], r.raw) for r in rows if r.raw])
    if device_order is not None:  # the device's order, on every channel it changes
        rows = [
            dataclasses.replace(r, suggested_order=device_order)
            if r.raw and _changes(specs[r.channel], r.raw, device_order)
            else r
            for r in rows
        ]
    position = {c.channel: i for i, c in enumerate(device.channels)}
    return sorted(rows, key=lambda r: position[r.channel])


def _changes(spec: ChannelSpec, words: Sequence[int], order: Order) -> bool:
    """Whether reading `words` under `order` gives another value than the configured one."""
    if order is spec.fmt.order:
        return False
    try:
        now = spec.decode(words)
        then = decode(words, dataclasses.replace(spec.fmt, order=order))
    except DecodeError:
        return True
    return now.raw != then.raw and not (now.sentinel and then.sentinel)


async def _probe_read(line: Line, device: Device, read: Read, clock: Clock) -> list[CheckRow]:
    ts = dt.datetime.fromtimestamp(clock.now(), dt.UTC)
    try:
        words = await line.read(device.unit_id, read.function, read.address, read.count)
    except ModbusError as exc:
        return _failed_rows(device, read, exc.label)
    rows = []
    samples = decode_read(read, words, device.meter_id, ts)
    for spec, sample in zip(read.channels, samples, strict=True):
        plausible = None if sample.value is None else sample.quality == "good"
        suggestion = None
        if plausible and sample.raw and judges_order(spec):
            # stricter than the profile's range: 2.4e-41 V is in [0, 300] but no reading
            plausible = plausible_under(spec, sample.raw, spec.fmt.order)
        if plausible is False and sample.raw:
            suggestion = suggest_order(spec, sample.raw)
        rows.append(
            CheckRow(device.meter_id, device.bus, device.unit_id, spec.channel, sample.value,
                     spec.unit, plausible, sample.raw, sample.quality, None, suggestion)
        )  # fmt: skip
    return rows


def _failed_rows(device: Device, read: Read, label: str) -> list[CheckRow]:
    return [
        CheckRow(device.meter_id, device.bus, device.unit_id, spec.channel, None, spec.unit,
                 None, None, "comm_error", error=label)
        for spec in read.channels
    ]  # fmt: skip


HEADER = ("meter", "unit id", "channel", "value", "unit", "plausible", "raw", "note")


def _value(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return f"{int(value)}"
    return f"{value:.6g}"


def _note(row: CheckRow) -> str:
    if row.error:
        return f"no value: {row.error}"
    if row.quality == "nan_sentinel":
        return "not available (NaN sentinel)"
    if row.suggested_order is not None:
        return f"word order {row.suggested_order} would be plausible"
    if row.quality == "comm_error":
        return "undecodable words"
    return ""


def render_table(rows: Sequence[CheckRow]) -> str:
    """A plain-text table for a terminal, one line per channel, and a summary line."""
    cells = [
        (
            r.meter_id,
            str(r.unit_id),
            r.channel,
            _value(r.value),
            r.unit,
            {True: "yes", False: "NO", None: "-"}[r.plausible],
            " ".join(f"{w:04X}" for w in r.raw) if r.raw else "-",
            _note(r),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(HEADER)]  # fmt: skip
    right = {3}  # numbers align right

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if i in right else v.ljust(w)
                 for i, (v, w) in enumerate(zip(values, widths, strict=True))]  # fmt: skip
        return "  ".join(parts).rstrip()

    out = [line(HEADER), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    meters = {r.meter_id for r in rows}
    silent = {r.meter_id for r in rows if r.error in ("timeout", "io")}
    implausible = sum(r.plausible is False for r in rows)
    suggestions = sum(r.suggested_order is not None for r in rows)
    out.append("")
    out.append(
        f"{len(meters)} devices, {len(rows)} channels: {len(meters) - len(silent)} answered,"
        f" {implausible} implausible values, {suggestions} word-order suggestions"
    )
    return "\n".join(out)
