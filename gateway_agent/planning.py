"""Read planning and block decoding: which Modbus reads fetch a device's channels, and what
the words of one read mean. Pure: no I/O, no clock (the caller passes the poll instant).

A read covers adjacent registers of one function code. The planner coalesces channels into
the fewest reads, each at most the device's maximum (<= 125 registers) and each lying wholly
inside an address range the device answers (`Profile.answers`), so a read never touches a
forbidden or unmapped gap and draws exception 0x02. Channels are sorted by address and each
read is grown greedily as far as it may go; for points on a line covered by intervals of
bounded length that cannot cross a hole, greedy is optimal.

    >>> from gateway_agent.profiles import builtin_profile
    >>> p = builtin_profile("eastron_sdm630")
    >>> fast = [c for c in p.channels.values() if c.poll_group == "fast"]
    >>> [(r.function, r.address, r.count, len(r.channels)) for r in plan_reads(p, fast)][:2]
    [(4, 0, 18, 9), (4, 52, 2, 1)]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway_agent.profiles import ChannelSpec, Profile
from gateway_agent.registers import DecodeError
from gateway_agent.sample import Sample


@dataclass(frozen=True, slots=True)
class Read:
    """One Modbus request: `count` registers from `address` with `function`, and the channels
    it carries (sorted by address)."""

    function: int
    address: int
    count: int
    channels: tuple[ChannelSpec, ...]

    @property
    def end(self) -> int:
        """First address past the read."""
        return self.address + self.count


def plan_reads(
    profile: Profile,
    channels: Iterable[ChannelSpec],
    max_registers: int | None = None,
    max_gap: int | None = None,
) -> tuple[Read, ...]:
    """The fewest reads that fetch `channels` of a device with `profile`.

    `max_registers` lowers the profile's own limit (a converter with small buffers);
    `max_gap` caps how many unwanted registers a read may carry between two channels (on a
    slow serial line a long gap can cost more wire time than a second request).
    """
    limit = min(profile.max_registers_per_read, max_registers or profile.max_registers_per_read)
    if limit < 1:
        raise ValueError(f"max_registers must be at least 1, not {max_registers}")
    ordered = sorted(channels, key=lambda c: (c.function, c.address, c.channel))
    reads: list[Read] = []
    group: list[ChannelSpec] = []
    for spec in ordered:
        if group:
            first, last = group[0], group[-1]
            start = first.address
            end = max(last.address + last.count, spec.address + spec.count)
            gap = spec.address - (last.address + last.count)
            if (
                spec.function == first.function
                and end - start <= limit
                and (max_gap is None or gap <= max_gap)
                and profile.answers(spec.function, start, end - start)
            ):
                group.append(spec)
                continue
            reads.append(_read(group))
        if spec.count > limit or not profile.answers(spec.function, spec.address, spec.count):
            raise ValueError(
                f"{profile.id}: channel {spec.channel} ({spec.count} registers at"
                f" {spec.address:#06x}) cannot be read within {limit} answered registers"
            )
        group = [spec]
    if group:
        reads.append(_read(group))
    return tuple(reads)


def _read(group: list[ChannelSpec]) -> Read:
    start = group[0].address
    end = max(c.address + c.count for c in group)
    return Read(group[0].function, start, end - start, tuple(group))


def decode_read(read: Read, words: Sequence[int], meter_id: str, ts: dt.datetime) -> list[Sample]:
    """The samples in the words of one read. Never raises for bad words: a value that does not
    decode becomes a `comm_error` sample with the raw words kept for audit.

    A NaN sentinel becomes `nan_sentinel` (no value); a value outside the profile's plausible
    range keeps its value with quality `out_of_range`.
    """
    complete = len(words) == read.count
    out: list[Sample] = []
    for spec in read.channels:
        lo = spec.address - read.address
        chunk = tuple(words[lo : lo + spec.count]) if complete else ()
        try:
            decoded = spec.decode(chunk)
        except DecodeError:
            out.append(Sample(meter_id, spec.channel, ts, None, spec.unit, "comm_error",
                              chunk or None))  # fmt: skip
            continue
        if decoded.sentinel:
            out.append(Sample(meter_id, spec.channel, ts, None, spec.unit, "nan_sentinel", chunk))
        elif not spec.is_plausible(decoded.value):
            out.append(
                Sample(meter_id, spec.channel, ts, decoded.value, spec.unit, "out_of_range", chunk)
            )
        else:
            out.append(Sample(meter_id, spec.channel, ts, decoded.value, spec.unit, "good", chunk))
    return out


def failed_read(read: Read, meter_id: str, ts: dt.datetime) -> list[Sample]:
    """A read the device did not answer (timeout, exception): one `comm_error` per channel."""
    return [Sample.comm_error(meter_id, spec.channel, ts) for spec in read.channels]
