"""Which word/byte order a misconfigured channel really uses, judged by physics. Pure.

When a technician commissions a meter whose manual is wrong or ambiguous about word order,
the first sign is a voltage of 1.2e-41 V or a frequency of 8.9e+12 Hz. Mains voltage and
frequency have narrow plausible ranges, so among the four orders usually exactly one decodes
the same words to a plausible value; that order is the suggestion. Other channels (energy,
power, current) have ranges wide enough that a wrong order can look plausible, so they are
not used to guess.

    >>> from gateway_agent.profiles import builtin_profile
    >>> spec = builtin_profile("eastron_sdm630").channels["voltage_l1_v"]  # f32, ABCD
    >>> suggest_order(spec, [0x83E3, 0x4366])  # the meter sends the low word first
    <Order.CDAB: 'CDAB'>
    >>> suggest_order(spec, [0x0000, 0x4366])  # 230.0 V word-swapped: 2.4e-41 under ABCD
    <Order.CDAB: 'CDAB'>
    >>> suggest_order(spec, [0x4366, 0x83E3]) is None  # already plausible
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from gateway_agent.profiles import ChannelSpec
from gateway_agent.registers import DecodeError, Order, decode

# Channels whose plausible range pins the order down.
JUDGED_PREFIXES: Final = ("voltage_", "frequency_")
# A meter reports 0 V on a dead phase, never 2.4e-41 V: a non-zero magnitude below this is
# a wrong order (a word-swapped float whose low word is zero decodes to a denormal).
MIN_MAGNITUDE: Final = 1.0
# Tried in this order; the most common field mistakes first (word swap, then byte swap).
PREFERENCE: Final = (Order.CDAB, Order.ABCD, Order.BADC, Order.DCBA)


def judges_order(spec: ChannelSpec) -> bool:
    """Whether the channel's plausible range is narrow enough to tell word orders apart."""
    return spec.plausible is not None and spec.channel.startswith(JUDGED_PREFIXES)


def plausible_under(spec: ChannelSpec, words: Sequence[int], order: Order) -> bool:
    """Whether `words` decode to a plausible, non-sentinel value of `spec` under `order`."""
    fmt = dataclasses.replace(spec.fmt, order=order)
    try:
        decoded = decode(words, fmt)
    except DecodeError:
        return False
    value = decoded.value
    if decoded.sentinel or not spec.is_plausible(value):
        return False
    return value == 0 or abs(value) >= MIN_MAGNITUDE


def suggest_order(spec: ChannelSpec, words: Sequence[int]) -> Order | None:
    """The order under which `words` give a plausible voltage/frequency, when the configured
    order does not; None when the configured order is plausible, the channel cannot judge, or
    no order helps."""
    if not judges_order(spec) or plausible_under(spec, words, spec.fmt.order):
        return None
    for order in PREFERENCE:
        if order is not spec.fmt.order and plausible_under(spec, words, order):
            return order
    return None


def suggest_device_order(readings: Sequence[tuple[ChannelSpec, Sequence[int]]]) -> Order | None:
    """One order for a whole device, judged on all its voltage/frequency channels together.

    A single channel can be ambiguous (229.25 V word-swapped reads as a plausible 2.0 V), but
    a device stores all its values one way: the suggestion is the preferred order under which
    every judged channel is plausible, given when at least one is implausible as configured.
    """
    judged = [(spec, words) for spec, words in readings if judges_order(spec)]
    if all(plausible_under(spec, words, spec.fmt.order) for spec, words in judged):
        return None
    for order in PREFERENCE:
        if all(plausible_under(spec, words, order) for spec, words in judged):
            return order
    return None
