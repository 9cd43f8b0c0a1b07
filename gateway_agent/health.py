"""Per-device health: when a device last answered, how it has been failing, and how long the
poller leaves it alone. Pure: the caller passes the instant (unix seconds of the agent's clock).

A device that does not answer (timeout, or an answer that does not fit the request) is backed
off exponentially: after the n-th consecutive such failure it is not asked again for
`min(base * 2**(n-1), cap)` seconds, so a dead meter on a serial bus costs at most one timeout
each time it is retried and its neighbours keep their poll rate. A Modbus exception is an
answer (the device is alive and quick), so it is counted but does not back the device off.

    >>> h = DeviceHealth("m1")
    >>> h.record_failure("timeout", now=100.0, base_s=5.0, cap_s=60.0)
    >>> h.backoff_until, h.backed_off(104.0), h.backed_off(105.0)
    (105.0, True, False)
    >>> h.record_success(105.0)
    >>> h.to_json()["consecutive_failures"], h.backoff_until
    (0, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

BACKOFF_KINDS: Final = frozenset({"timeout", "io"})


def backoff_delay(failures: int, base_s: float, cap_s: float) -> float:
    """Seconds to leave a device alone after `failures` consecutive unanswered reads (>= 1)."""
    if failures < 1:
        return 0.0
    # 2**(failures-1) grows without bound; stop doubling once the cap is reached.
    delay = base_s
    for _ in range(failures - 1):
        if delay >= cap_s:
            break
        delay *= 2
    return min(delay, cap_s)


@dataclass(slots=True)
class DeviceHealth:
    """How one device has been answering. Mutated only by `record_*`."""

    meter_id: str
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None  # label of the last failure: timeout, io, exception_0x06
    consecutive_failures: int = 0  # of any kind, reset by an answer with words
    consecutive_timeouts: int = 0  # timeouts and io only: what drives the backoff
    backoff_until: float | None = None
    reads_ok: int = 0
    reads_failed: int = 0
    reads_skipped: int = 0  # reads not attempted because the device was backed off
    errors: dict[str, int] = field(default_factory=dict)  # label -> count

    def backed_off(self, now: float) -> bool:
        """Whether the poller should leave the device alone at `now`."""
        return self.backoff_until is not None and now < self.backoff_until

    @property
    def failing(self) -> bool:
        return self.consecutive_timeouts > 0

    def record_success(self, now: float) -> None:
        self.last_success = now
        self.consecutive_failures = 0
        self.consecutive_timeouts = 0
        self.backoff_until = None
        self.reads_ok += 1

    def record_failure(self, label: str, now: float, base_s: float, cap_s: float) -> None:
        """One failed read; `label` is `timeout`, `io` or `exception_0x..`."""
        self.last_failure = now
        self.last_error = label
        self.consecutive_failures += 1
        self.reads_failed += 1
        self.errors[label] = self.errors.get(label, 0) + 1
        if label in BACKOFF_KINDS:
            self.consecutive_timeouts += 1
            self.backoff_until = now + backoff_delay(self.consecutive_timeouts, base_s, cap_s)

    def record_skipped(self, reads: int) -> None:
        self.reads_skipped += reads

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only, for the status heartbeat."""
        return {
            "meter_id": self.meter_id,
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "backoff_until": self.backoff_until,
            "reads_ok": self.reads_ok,
            "reads_failed": self.reads_failed,
            "reads_skipped": self.reads_skipped,
            "errors": dict(sorted(self.errors.items())),
        }
