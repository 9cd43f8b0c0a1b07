"""Device profiles: every shipped profile loads, matches the public maps' wire addresses and
golden vectors, and a broken profile is rejected with its file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.channels import CHANNELS
from gateway_agent.profiles import (
    ProfileError,
    builtin_profile,
    builtin_profiles,
    load_profile,
    parse_profile,
)
from gateway_agent.registers import DType, Order

SHIPPED = ["acrel_adl400", "eastron_sdm120", "eastron_sdm630", "schneider_iem3155", "tuf2000m"]


def test_every_simulated_meter_has_a_profile() -> None:
    assert sorted(builtin_profiles()) == SHIPPED


@pytest.mark.parametrize("profile_id", SHIPPED)
def test_shipped_profile_is_consistent(profile_id: str) -> None:
    profile = builtin_profile(profile_id)
    assert profile.golden, "golden vectors are mandatory"
    for golden in profile.golden:
        decoded = profile.channels[golden.channel].decode(list(golden.registers))
        if golden.value is None:
            assert decoded.sentinel
        else:
            assert decoded.value == pytest.approx(golden.value, rel=1e-6)
    for name, spec in profile.channels.items():
        assert spec.unit == CHANNELS[name].unit
        assert spec.poll_group in profile.poll_groups
        assert profile.answers(spec.function, spec.address, spec.count)
        assert spec.count <= profile.max_registers_per_read <= 125


@pytest.mark.parametrize(
    ("profile_id", "channel", "function", "wire", "dtype", "order"),
    [
        # (meter-register-maps.md "Addr" column; TUF-2000 manual REG numbers minus one)
        ("eastron_sdm630", "voltage_l1_v", 4, 0x0000, DType.F32, Order.ABCD),
        ("eastron_sdm630", "energy_import_kwh", 4, 0x0048, DType.F32, Order.ABCD),
        ("eastron_sdm630", "frequency_hz", 4, 0x0046, DType.F32, Order.ABCD),
        ("eastron_sdm120", "energy_export_kwh", 4, 0x004A, DType.F32, Order.ABCD),
        ("acrel_adl400", "energy_import_kwh", 3, 0x000A, DType.I32, Order.ABCD),
        ("acrel_adl400", "current_l1_a", 3, 0x0064, DType.U16, Order.ABCD),
        ("acrel_adl400", "power_w", 3, 0x016A, DType.I32, Order.ABCD),
        ("schneider_iem3155", "current_l1_a", 3, 0x0BB7, DType.F32, Order.ABCD),
        ("schneider_iem3155", "voltage_l1_v", 3, 0x0BD3, DType.F32, Order.ABCD),
        ("schneider_iem3155", "power_w", 3, 0x0BF3, DType.F32, Order.ABCD),
        ("schneider_iem3155", "frequency_hz", 3, 0x0C25, DType.F32, Order.ABCD),
        ("schneider_iem3155", "energy_import_kwh", 3, 0xB02B, DType.F32, Order.ABCD),
        ("tuf2000m", "water_flow_m3h", 3, 0x0000, DType.F32, Order.CDAB),
        ("tuf2000m", "water_volume_m3", 3, 0x0008, DType.I32, Order.CDAB),
    ],
)
def test_wire_addresses_match_the_reference_maps(
    profile_id: str, channel: str, function: int, wire: int, dtype: DType, order: Order
) -> None:
    spec = builtin_profile(profile_id).channels[channel]
    assert (spec.function, spec.address, spec.fmt.dtype, spec.fmt.order) == (
        function,
        wire,
        dtype,
        order,
    )


def test_identity_and_counter_facts() -> None:
    assert builtin_profile("eastron_sdm630").identity["serial_number"].address == 0xFC00
    assert builtin_profile("schneider_iem3155").identity["serial_number"].address == 0x0081
    iem = builtin_profile("schneider_iem3155")
    assert iem.serial.baud == 19200
    assert iem.serial.parity == "E"
    assert iem.channels["power_w"].fmt.scale == 1000.0  # kW on the wire, W in the channel
    adl = builtin_profile("acrel_adl400").channels["energy_import_kwh"]
    assert adl.modulus == pytest.approx(2**31 * 0.01)  # int32 x0.01 kWh wraps at 21474836.48
    assert builtin_profile("eastron_sdm630").channels["energy_import_kwh"].modulus is None
    assert builtin_profile("eastron_sdm120").serial.baud == 2400


def test_answers_refuses_reads_that_touch_unmapped_registers() -> None:
    sdm = builtin_profile("eastron_sdm630")
    assert sdm.answers(4, 0x0000, 44)
    assert not sdm.answers(4, 0x002C, 2)  # 30045: not in the map
    assert not sdm.answers(4, 0x0040, 8)  # starts mapped, runs into 0x0044
    assert not sdm.answers(3, 0x0000, 1)
    assert not sdm.answers(4, 0x0048, 0)
    assert sdm.answered_spans(3)[-1] == (0xFC00, 0xFC02)


# --- broken profiles -----------------------------------------------------------------------

VALID = """\
[profile]
id = "test_meter"
manufacturer = "Test"
model = "T1"
kind = "electricity"
max_registers_per_read = 60
default_unit_id = 1

[profile.serial]
baud = 9600
parity = "N"
stop_bits = 1

[profile.poll_groups]
fast = 5.0

[channels.voltage_l1_v]
function = 4
numbering = "modicon"
address = 30001
dtype = "f32"
unit = "V"
poll_group = "fast"

[channels.power_w]
function = 4
numbering = "protocol-0based"
address = 0x34
dtype = "f32"
unit = "W"
poll_group = "fast"

[[profile.golden]]
channel = "voltage_l1_v"
registers = [0x4366, 0x0000]
value = 230.0
"""


def test_the_template_is_valid() -> None:
    profile = parse_profile(VALID, "test.toml")
    assert profile.channels["voltage_l1_v"].address == 0
    assert profile.channels["power_w"].address == 0x34


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "message"),
    [
        ('unit = "V"', 'unit = "kV"', "channels.voltage_l1_v.unit", 22, "not the unit"),
        ("[channels.power_w]", "[channels.power_kw]", "channels.power_kw", 25, "not a channel"),
        ("value = 230.0", "value = 231.0", "profile.golden[0].value", 36, "decode to"),
        ('dtype = "f32"\nunit = "V"', 'dtpye = "f32"\nunit = "V"', "channels.voltage_l1_v", 17,
         "dtype"),
        ('dtype = "f32"\nunit = "W"', 'dtype = "f32"\nunit = "W"\nmodulus = 10.0',
         "channels.power_w.modulus", 31, "not a cumulative"),
        ("address = 0x34", "address = 0x01", "channels.power_w.address", 28, "overlaps"),
        ("address = 30001", "address = 40001", "channels.voltage_l1_v.address", 20, "modicon"),
        ('poll_group = "fast"\n\n[channels.power_w]', 'poll_group = "slow"\n\n[channels.power_w]',
         "channels.voltage_l1_v.poll_group", 23, "poll_groups"),
        ("max_registers_per_read = 60", "max_registers_per_read = 200",
         "profile.max_registers_per_read", 6, "1..125"),
        ('numbering = "modicon"', 'numbering = "one-based"', "channels.voltage_l1_v.numbering", 19,
         "not one of"),
        ('dtype = "f32"\nunit = "V"', 'dtype = "f32"\nunit = "V"\nextra = 1',
         "channels.voltage_l1_v.extra", 23, "unknown field"),
    ],
)  # fmt: skip
def test_broken_profile_names_file_line_and_field(
    old: str, new: str, field: str, line: int, message: str
) -> None:
    assert old in VALID
    with pytest.raises(ProfileError) as caught:
        parse_profile(VALID.replace(old, new, 1), "broken.toml")
    error = caught.value
    assert error.file == "broken.toml"
    assert error.field == field
    assert message in error.message
    assert error.line == line
    assert str(error).startswith(f"broken.toml:{line}: {field}: ")


def test_golden_that_does_not_encode_back_is_rejected() -> None:
    broken = VALID.replace("value = 230.0", "value = 230.00001\ntolerance = 0.001")
    with pytest.raises(ProfileError, match="encodes to"):
        parse_profile(broken, "broken.toml")
    assert parse_profile(broken + "encodes = false\n", "ok.toml")


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text(VALID.replace("fast = 5.0", "fast = = 5.0"), encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.file == str(path)
    assert caught.value.line == 15
    assert caught.value.field == "toml"


def test_missing_golden_vectors_are_rejected() -> None:
    without = VALID[: VALID.index("[[profile.golden]]")]
    with pytest.raises(ProfileError, match="golden"):
        parse_profile(without, "nogolden.toml")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"nothing\.toml"):
        load_profile(tmp_path / "nothing.toml")


@pytest.mark.parametrize(
    ("numbering", "function", "address", "wire"),
    [
        ("protocol-0based", 3, 0, 0),
        ("manual-1based", 3, 1, 0),
        ("manual-1based", 3, 45100, 0xB02B),
        ("modicon", 4, 30073, 0x0048),
        ("modicon", 3, 40001, 0),
        ("modicon", 4, 300003, 2),
        ("modicon", 3, 465536, 0xFFFF),
    ],
)
def test_numbering_normalises_to_wire_addresses(
    numbering: str, function: int, address: int, wire: int
) -> None:
    text = VALID.replace(
        'function = 4\nnumbering = "protocol-0based"\naddress = 0x34',
        f'function = {function}\nnumbering = "{numbering}"\naddress = {address}',
    ).replace('dtype = "f32"\nunit = "W"', 'dtype = "u16"\nunit = "W"')
    assert parse_profile(text, "n.toml").channels["power_w"].address == wire


def test_forbidden_span_removes_addresses_from_reads() -> None:
    text = VALID.replace(
        "[profile.poll_groups]",
        '[[profile.readable]]\nfunction = 4\nnumbering = "protocol-0based"\nfirst = 2\nlast = 9\n'
        '[[profile.forbidden]]\nfunction = 4\nnumbering = "protocol-0based"\nfirst = 5\nlast = 5\n'
        "\n[profile.poll_groups]",
    )
    profile = parse_profile(text, "f.toml")
    assert profile.answers(4, 0, 5)
    assert not profile.answers(4, 0, 6)
    assert profile.answers(4, 6, 4)
