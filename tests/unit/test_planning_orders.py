"""`suggest_order`: a voltage or frequency decoded under the wrong word order is recognised
by physics, and the order that makes it plausible is suggested."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_agent.planning_orders import plausible_under, suggest_device_order, suggest_order
from gateway_agent.profiles import ChannelSpec, builtin_profile
from gateway_agent.registers import Order, decode, encode

SDM630_V = builtin_profile("eastron_sdm630").channels["voltage_l1_v"]  # f32
SDM630_HZ = builtin_profile("eastron_sdm630").channels["frequency_hz"]
ADL400_V = builtin_profile("acrel_adl400").channels["voltage_l1_v"]  # u16 x0.1
IEM_V = builtin_profile("schneider_iem3155").channels["voltage_l1_v"]


def with_order(spec: ChannelSpec, order: Order) -> ChannelSpec:
    return dataclasses.replace(spec, fmt=dataclasses.replace(spec.fmt, order=order))


@pytest.mark.parametrize("volts", [230.0, 229.8, 120.0, 240.5, 231.51518])
def test_word_swapped_voltage_read_as_abcd_suggests_cdab(volts: float) -> None:
    stored = encode(volts, with_order(SDM630_V, Order.CDAB).fmt)  # the meter's real order
    assert SDM630_V.fmt.order is Order.ABCD  # what the profile says
    assert not plausible_under(SDM630_V, stored, Order.ABCD)
    assert suggest_order(SDM630_V, stored) is Order.CDAB
    assert decode(stored, with_order(SDM630_V, Order.CDAB).fmt).value == pytest.approx(volts)


@pytest.mark.parametrize("order", [Order.BADC, Order.DCBA])
def test_other_orders_are_found(order: Order) -> None:
    stored = encode(50.02, with_order(SDM630_HZ, order).fmt)
    assert suggest_order(SDM630_HZ, stored) is order


def test_configured_order_plausible_means_no_suggestion() -> None:
    assert suggest_order(SDM630_V, encode(230.1, SDM630_V.fmt)) is None
    assert suggest_order(SDM630_V, [0, 0]) is None  # 0 V: a dead phase, any order
    assert suggest_order(ADL400_V, encode(230.0, ADL400_V.fmt)) is None


def test_byte_swapped_u16_voltage() -> None:
    stored = encode(230.0, with_order(ADL400_V, Order.BADC).fmt)  # 0xFC08: 6452 V as ABCD
    assert suggest_order(ADL400_V, stored) is Order.BADC


def test_only_voltage_and_frequency_judge() -> None:
    power = builtin_profile("eastron_sdm630").channels["power_w"]
    stored = encode(1234.5, with_order(power, Order.CDAB).fmt)
    assert suggest_order(power, stored) is None


def test_nothing_plausible_means_no_suggestion() -> None:
    assert suggest_order(SDM630_V, [0x7F7F, 0xFFFF]) is None  # 3.4e38 V however read
    assert suggest_order(SDM630_V, [0xFFFF]) is None  # too few words: never raises


@given(st.floats(90.0, 290.0), st.sampled_from(list(Order)), st.sampled_from(list(Order)))
def test_a_suggestion_is_always_plausible_and_never_the_configured_order(
    volts: float, stored_order: Order, configured: Order
) -> None:
    spec = with_order(IEM_V, configured)
    stored = encode(volts, with_order(IEM_V, stored_order).fmt)
    suggestion = suggest_order(spec, stored)
    if plausible_under(spec, stored, configured):
        assert suggestion is None
    else:
        assert suggestion is not None  # the true order is always plausible
        assert suggestion is not configured
        assert plausible_under(spec, stored, suggestion)
        if stored_order is Order.CDAB:
            assert suggestion is Order.CDAB  # preferred when it works


def test_device_order_resolves_an_ambiguous_channel() -> None:
    """229.25 V word-swapped reads as 2.0 V, plausible alone; the device's other voltages and
    its frequency settle the order for all of them."""
    profile = builtin_profile("eastron_sdm630")
    truth = {"voltage_l1_v": 231.5, "voltage_l2_v": 230.0, "voltage_l3_v": 229.25,
             "frequency_hz": 50.0}  # fmt: skip
    readings = [
        (profile.channels[c], encode(v, with_order(profile.channels[c], Order.CDAB).fmt))
        for c, v in truth.items()
    ]
    l3 = readings[2]
    assert suggest_order(*l3) is None  # alone: ambiguous
    assert suggest_device_order(readings) is Order.CDAB
    right = [(spec, encode(truth[spec.channel], spec.fmt)) for spec, _ in readings]
    assert suggest_device_order(right) is None
    assert suggest_device_order([]) is None
