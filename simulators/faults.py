"""Faults a simulated meter can suffer, resolved to absolute times, and how each one acts.

Every fault kind acts on one layer of the meter, which decides what the ledger's `value` and
`true_value` show:

| layer        | kinds                                              | true_value | value        |
|--------------|----------------------------------------------------|------------|--------------|
| physical     | leak, spike, degradation, phase_loss, retrofit     | changed    | changed      |
| measurement  | ct_reversal                                        | unchanged  | changed      |
| register     | stuck, rollover, reset, replacement                | unchanged  | changed      |
| read         | zero_read, nan_read                                | unchanged  | 0 / NaN      |
| device       | no_response, busy, slow (+ reset/replacement       | unchanged  | null         |
|              | downtime)                                          |            |              |
| clock        | clock_drift                                        | unchanged  | ts shifted   |

`true_value` of a counter is the meter point's *virtual register*: the first meter's opening
reading plus the true integral, never wrapping, reset or replaced - what a correct consumption
pipeline reconstructs. A replacement also cuts the supply during its downtime (a direct meter
cannot be swapped live), so no energy goes unmetered.

Quality a correct gateway assigns: `comm_error` when the device does not answer in time,
`nan_sentinel` for a NaN read, `clock_suspect` when the meter's clock is off by at least the
gateway's tolerance, otherwise `good` (a bad zero, a stuck register or a spike look valid on the
wire; telling them apart is the analytics' job).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import numpy as np

from simulators.physics import F64, B, derive, uniform

FaultKind = Literal[
    "leak",
    "spike",
    "stuck",
    "zero_read",
    "nan_read",
    "rollover",
    "reset",
    "replacement",
    "no_response",
    "busy",
    "slow",
    "clock_drift",
    "degradation",
    "ct_reversal",
    "phase_loss",
    "retrofit",
]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
PHYSICAL: Final = frozenset({"leak", "spike", "degradation", "phase_loss", "retrofit"})
DEVICE: Final = frozenset({"no_response", "busy", "slow"})

Quality = Literal["good", "nan_sentinel", "comm_error", "clock_suspect"]
QUALITIES: Final[tuple[Quality, ...]] = ("good", "nan_sentinel", "comm_error", "clock_suspect")
Q_GOOD, Q_NAN, Q_COMM, Q_CLOCK = 0, 1, 2, 3

MODBUS_SLAVE_BUSY: Final = 0x06


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault on one meter, at absolute unix seconds [start, end) (end None = open)."""

    meter_id: str
    kind: FaultKind
    start: int
    end: int | None
    params: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0  # position in the scenario's faults list (keys its randomness)

    def active(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)

    def window(self, t: F64) -> B:
        """Mask of instants inside [start, end)."""
        mask = t >= self.start
        if self.end is not None:
            mask &= t < self.end
        return mask

    @property
    def downtime_end(self) -> int:
        """End of the device's silence for reset/replacement (start + downtime)."""
        return self.start + int(self.params.get("downtime_s", 0))

    def overlaps(self, lo: int, hi: int) -> bool:
        return self.start < hi and (self.end is None or self.end > lo)


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """How a device answers a request at some instant, for the Modbus/MQTT side.

    kind: "no_response" (stay silent), "busy" (Modbus exception `exception_code`, 0x06 slave
    device busy), "slow" (answer after `delay_s`)."""

    kind: Literal["no_response", "busy", "slow"]
    delay_s: float = 0.0
    exception_code: int | None = None


def params_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON of fault parameters (sorted keys, no spaces): stable bytes in the ledger."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _probability_hit(meter_key: int, fault: FaultSpec, t: F64) -> B:
    p = float(fault.params.get("probability", 1.0))
    if p >= 1.0:
        return np.ones(t.shape, dtype=np.bool_)
    key = derive(meter_key, f"fault-{fault.index}")
    return uniform(np.uint64(key), np.floor(t).astype(np.int64)) < p


def read_fault_mask(meter_key: int, fault: FaultSpec, t: F64) -> B:
    """Instants at which a zero_read / nan_read / busy fault hits (window x probability)."""
    return fault.window(t) & _probability_hit(meter_key, fault, t)


def silent_mask(meter_key: int, faults: Sequence[FaultSpec], t: F64, timeout_s: float) -> B:
    """Instants at which the device gives the gateway no usable answer (comm_error)."""
    mask = np.zeros(t.shape, dtype=np.bool_)
    for f in faults:
        if f.kind == "no_response":
            mask |= f.window(t)
        elif f.kind == "busy":
            mask |= read_fault_mask(meter_key, f, t)
        elif f.kind == "slow":
            if float(f.params["delay_ms"]) / 1000.0 >= timeout_s:
                mask |= f.window(t)
        elif f.kind in ("reset", "replacement") and f.downtime_end > f.start:
            mask |= (t >= f.start) & (t < f.downtime_end)
    return mask


def device_fault_at(meter_key: int, faults: Sequence[FaultSpec], t: float) -> DeviceFault | None:
    """The device-level fault in force at instant t (silence wins over busy over slow)."""
    ts = np.asarray([t], dtype=np.float64)
    found: DeviceFault | None = None
    rank = {"no_response": 3, "busy": 2, "slow": 1}
    for f in faults:
        current: DeviceFault | None = None
        silent = f.kind == "no_response" and f.active(t)
        rebooting = f.kind in ("reset", "replacement") and f.start <= t < f.downtime_end
        if silent or rebooting:
            current = DeviceFault("no_response")
        elif f.kind == "busy" and bool(read_fault_mask(meter_key, f, ts)[0]):
            current = DeviceFault("busy", exception_code=MODBUS_SLAVE_BUSY)
        elif f.kind == "slow" and f.active(t):
            current = DeviceFault("slow", delay_s=float(f.params["delay_ms"]) / 1000.0)
        if current is not None and (found is None or rank[current.kind] > rank[found.kind]):
            found = current
    return found


def clock_offset(faults: Sequence[FaultSpec], t: F64) -> F64:
    """Seconds the meter's clock is ahead of true time (negative: behind) at instants t."""
    out = np.zeros(t.shape, dtype=np.float64)
    for f in faults:
        if f.kind == "clock_drift":
            rate = float(f.params["drift_s_per_day"]) / 86400.0
            out += np.where(f.window(t), (t - f.start) * rate, 0.0)
    return out


def ramp(fault: FaultSpec, t: F64) -> F64:
    """Progress 0..1 of a degradation at instants t (0 before start and after a repair)."""
    span = float(fault.params["ramp_days"]) * 86400.0
    p = np.clip((t - fault.start) / span, 0.0, 1.0)
    out: F64 = np.where(fault.window(t), p, 0.0)
    return out


def ramp_integral_cycles(fault: FaultSpec, t: F64) -> F64:
    """Integral of ramp progress over time, in hours, from the fault start to t (closed form,
    so the pump's cycle phase is the same however time is cut into blocks)."""
    span = float(fault.params["ramp_days"]) * 86400.0
    end = math.inf if fault.end is None else float(fault.end)
    x = np.clip(np.minimum(t, end) - fault.start, 0.0, None)
    ramp_part = np.minimum(x, span)
    integral: F64 = ramp_part * ramp_part / (2.0 * span) + np.maximum(x - span, 0.0)
    return integral / 3600.0


def pump_degradation(faults: Sequence[FaultSpec], t: F64) -> tuple[F64, F64] | None:
    """(extra cycles accumulated, duty factor) over instants t for a pump's degradation faults,
    or None when it has none. Energy per cycle grows by `energy_per_cycle_pct` (longer runs),
    cycle rate by `short_cycling_factor` (more, shorter starts), both ramping over `ramp_days`."""
    relevant = [f for f in faults if f.kind == "degradation"]
    if not relevant:
        return None
    extra = np.zeros(t.shape)
    duty = np.ones(t.shape)
    for f in relevant:
        extra += (float(f.params["short_cycling_factor"]) - 1.0) * ramp_integral_cycles(f, t)
        duty *= 1.0 + float(f.params["energy_per_cycle_pct"]) / 100.0 * ramp(f, t)
    return extra, duty
