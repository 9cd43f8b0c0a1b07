"""The simulator's view of each meter model stays in step with the gateway's device profiles:
the same channels (so a simulated Modbus device never serves a default 0), the resolution of
the registers, and the counter moduli."""

from __future__ import annotations

import pytest

from contracts.channels import CHANNELS
from gateway_agent.profiles import builtin_profiles
from gateway_agent.registers import DType
from simulators.catalogue import PROFILES

# Simulator profile name -> gateway profile id.
MODBUS = {
    "eastron-sdm630": "eastron_sdm630",
    "eastron-sdm120": "eastron_sdm120",
    "acrel-adl400": "acrel_adl400",
    "schneider-iem3155": "schneider_iem3155",
}


def test_every_channel_is_in_the_vocabulary() -> None:
    for profile in PROFILES.values():
        assert set(profile.channels) <= set(CHANNELS)
        assert set(profile.resolution) <= set(profile.channels)
        assert set(profile.default_modulus) <= set(profile.counters)


@pytest.mark.parametrize("name", sorted(MODBUS))
def test_channels_resolution_and_moduli_match_the_gateway(name: str) -> None:
    ours = PROFILES[name]
    theirs = builtin_profiles()[MODBUS[name]]
    assert set(ours.channels) == set(theirs.channels), name
    for channel, spec in theirs.channels.items():
        resolution = ours.resolution[channel]
        if spec.fmt.dtype is DType.F32:
            assert resolution == ("f32k" if spec.fmt.scale == 1000.0 else "f32"), channel
            assert spec.fmt.scale in (1.0, 1000.0)
        else:
            assert resolution == pytest.approx(spec.fmt.scale), channel
        assert ours.default_modulus.get(channel) == (
            None if spec.modulus is None else pytest.approx(spec.modulus)
        ), channel
