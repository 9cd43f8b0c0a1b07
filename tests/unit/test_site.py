"""Site files: the example loads, defaults come from profiles and the forward broker, every
refusal names the file, line and field, and no mutation of a valid file raises anything but
`SiteError`."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_agent.profiles import builtin_profile
from gateway_agent.site import (
    Bus,
    ForwardConfig,
    InputBroker,
    OutboxConfig,
    Site,
    SiteError,
    TlsConfig,
    load_site,
    parse_site,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "ops" / "gateway" / "site.example.toml"

BASE = """\
[gateway]
id = "gw-test"
env = "dev"

[forward]
mqtt_url = "mqtt://127.0.0.1:1883"

[outbox]
path = "outbox.sqlite"

[[buses]]
name = "line1"
transport = "rtu"
path = "/dev/ttyUSB0"

[[buses]]
name = "tcp1"
transport = "tcp"
host = "10.0.0.5"

[[devices]]
meter_id = "M-1"
bus = "line1"
unit_id = 1
profile = "eastron_sdm120"

[[devices]]
meter_id = "M-2"
bus = "line1"
unit_id = 2
profile = "eastron_sdm120"

[[devices]]
meter_id = "M-3"
bus = "tcp1"
profile = "schneider_iem3155"

[[mqtt_meters]]
meter_id = "PLUG-1"
topic = "tele/plug-1/SENSOR"
ts_path = "Time"
time_zone = "Asia/Shanghai"
channels = { energy_import_kwh = "ENERGY.Total", power_w = "ENERGY.Power" }
"""

PROD_TLS = {
    'env = "dev"': 'env = "prod"',
    'mqtt_url = "mqtt://127.0.0.1:1883"': (
        'mqtt_url = "mqtts://broker.example.net"\n\n[forward.tls]\nca_file = "ca.pem"'
    ),
}


def edit(text: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def line_of(text: str, needle: str, occurrence: int = 0) -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[occurrence]


def test_example_loads() -> None:
    site = load_site(EXAMPLE)
    folder = EXAMPLE.parent
    assert site.gateway_id == "gw-p001-01"
    assert site.env == "prod"
    assert site.source == str(EXAMPLE)
    assert site.forward.tls == TlsConfig(
        ca_file=str(folder / "tls/ca.pem"),
        cert_file=str(folder / "tls/gw-p001-01.crt"),
        key_file=str(folder / "tls/gw-p001-01.key"),
    )
    assert site.forward.session_expiry_s == 7 * 86400
    assert site.outbox.path == str(folder / "data/outbox.sqlite")
    assert site.outbox.budget_bytes == 256 * 1024 * 1024
    assert site.outbox.thin_keep_s == 900
    assert site.input_broker() == InputBroker(
        "mqtt://127.0.0.1:1883", "gw-p001-01-in", mqtt5=False, tls=None
    )
    assert list(site.buses) == ["rs485-1", "plant-room", "main-incomer"]
    assert site.buses["rs485-1"].backoff_max_s == 300
    assert site.buses["main-incomer"].port == 502
    first, second, water, _ = site.devices
    assert dict(first.poll_groups) == {"fast": 10.0, "energy": 60.0}
    assert [c.channel for c in second.channels] == [
        "voltage_l1_v",
        "power_w",
        "energy_import_kwh",
    ]  # the profile's order
    assert water.unit_id == builtin_profile("tuf2000m").default_unit_id
    assert water.max_registers_per_read == 32
    assert [m.meter_id for m in site.mqtt_meters] == ["P001-PLUG-01", "P001-WX-01"]
    assert site.mqtt_meters[1].channels == {
        "temperature_c": "temperature",
        "relative_humidity_pct": "humidity",
    }


def test_defaults() -> None:
    site = parse_site(BASE, "site.toml", base_dir="/srv/gw")
    assert isinstance(site, Site)
    assert site.forward.client_id == "gw-gw-test"
    assert site.forward.tls is None
    assert site.mqtt_input is None
    assert site.input_broker() == InputBroker("mqtt://127.0.0.1:1883", "gw-gw-test-in", True)
    assert site.outbox.path == "/srv/gw/outbox.sqlite"
    serial = site.buses["line1"].serial
    sdm120 = builtin_profile("eastron_sdm120").serial
    assert serial is not None
    assert (serial.baud, serial.parity, serial.stop_bits, serial.data_bits) == (
        sdm120.baud,
        sdm120.parity,
        sdm120.stop_bits,
        sdm120.data_bits,
    )
    assert site.buses["tcp1"].port == 502
    m3 = site.devices[2]
    assert m3.unit_id == builtin_profile("schneider_iem3155").default_unit_id
    assert m3.channels == tuple(builtin_profile("schneider_iem3155").channels.values())
    assert site.mqtt_meters[0].channels == {
        "energy_import_kwh": "ENERGY.Total",
        "power_w": "ENERGY.Power",
    }


def test_without_base_dir_relative_paths_stay_relative() -> None:
    assert parse_site(BASE).outbox.path == "outbox.sqlite"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("1.5", 1.5), ('"90s"', 90), ('"15m"', 900), ('"1h30m"', 5400),
     ('"2d"', 172800), ('"1500ms"', 1.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    site = parse_site(edit(BASE, {'path = "outbox.sqlite"': f"path = 'o'\nthin_keep = {text}"}))
    assert site.outbox.thin_keep_s == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 2**20), ('"256MiB"', 256 * 2**20), ('"1GB"', 10**9), ('"512 kB"', 512000),
     ('"2GiB"', 2 * 2**30), ('"100B"', 100)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    site = parse_site(edit(BASE, {'path = "outbox.sqlite"': f"path = 'o'\nbudget = {text}"}))
    assert site.outbox.budget_bytes == size


def test_prod_accepts_tls_with_a_pinned_ca_and_loopback_plaintext() -> None:
    site = parse_site(edit(BASE, PROD_TLS), base_dir="/etc/gw")
    assert site.forward.tls == TlsConfig(ca_file="/etc/gw/ca.pem")
    for host in ("127.0.0.1", "localhost", "[::1]"):
        url = f'mqtt_url = "mqtt://{host}:1883"'
        local = edit(
            BASE, {'env = "dev"': 'env = "prod"', 'mqtt_url = "mqtt://127.0.0.1:1883"': url}
        )
        assert parse_site(local).env == "prod"


def test_dev_allows_the_system_trust_store_and_insecure_tls() -> None:
    text = edit(
        BASE,
        {'mqtt_url = "mqtt://127.0.0.1:1883"': (
            'mqtt_url = "mqtts://broker.example.net"\n[forward.tls]\ninsecure = true')},
    )  # fmt: skip
    assert parse_site(text).forward.tls == TlsConfig(ca_file=None, insecure=True)
    bare = edit(BASE, {"mqtt://127.0.0.1": "mqtts://broker.example.net"})
    assert parse_site(bare).forward.tls == TlsConfig()


def test_mqtt_input_broker() -> None:
    text = BASE + '\n[mqtt_input]\nurl = "mqtt://10.1.1.1:1884"\nmqtt5 = false\n'
    assert parse_site(text).input_broker() == InputBroker(
        "mqtt://10.1.1.1:1884", "gw-gw-test-in", mqtt5=False, tls=None
    )
    same = parse_site(BASE + '\n[mqtt_input]\nclient_id = "reader"\n')
    assert same.input_broker() == InputBroker("mqtt://127.0.0.1:1883", "reader", True, None)


def test_profile_from_a_path_relative_to_the_site_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    shutil.copy(
        ROOT / "gateway_agent/profiles/eastron_sdm120.toml", tmp_path / "profiles/mine.toml"
    )
    site_file = tmp_path / "site.toml"
    site_file.write_text(
        edit(BASE, {'profile = "schneider_iem3155"': 'profile = "profiles/mine.toml"'})
    )
    site = load_site(site_file)
    assert site.devices[2].profile.id == "eastron_sdm120"
    assert site.outbox.path == str(tmp_path / "outbox.sqlite")

    (tmp_path / "profiles/mine.toml").write_text("[profile]\nid = 'x'\n")
    with pytest.raises(SiteError) as caught:
        load_site(site_file)
    assert caught.value.field == "devices[2].profile"
    assert "mine.toml" in caught.value.message


def test_missing_file() -> None:
    with pytest.raises(SiteError) as caught:
        load_site("/nonexistent/site.toml")
    assert caught.value.field == "file"
    assert str(caught.value).startswith("/nonexistent/site.toml: file:")


PROD = {'env = "dev"': 'env = "prod"'}

# (name, edits of BASE, field named, (text on the line named, occurrence) or None for no line)
ERRORS: list[tuple[str, dict[str, str], str, tuple[str, int] | None]] = [
    ("unknown table", {"[outbox]": "[bogus]\nx = 1\n\n[outbox]"}, "bogus", ("[bogus]", 0)),
    ("unknown key", {"[outbox]\n": "[outbox]\nbudgett = 5\n"}, "outbox.budgett",
     ("budgett", 0)),
    ("missing table", {"[outbox]\npath": "[outbx]\npath"}, "outbx", ("[outbx]", 0)),
    ("missing required key", {'path = "outbox.sqlite"': "budget = 5"}, "outbox.path",
     ("[outbox]", 0)),
    ("gateway id", {'id = "gw-test"': 'id = "gw/1"'}, "gateway.id", ("id =", 0)),
    ("env missing", {'env = "dev"\n': ""}, "gateway.env", ("[gateway]", 0)),
    ("env value", {'env = "dev"': 'env = "staging"'}, "gateway.env", ("env =", 0)),
    ("metrics port", {'env = "dev"': 'env = "dev"\nmetrics_port = 70000'},
     "gateway.metrics_port", ("metrics_port", 0)),
    ("duplicate meter id", {'meter_id = "M-2"': 'meter_id = "M-1"'}, "devices[1].meter_id",
     ('meter_id = "M-1"', 1)),
    ("meter id across kinds", {'meter_id = "PLUG-1"': 'meter_id = "M-3"'},
     "mqtt_meters[0].meter_id", ('meter_id = "M-3"', 1)),
    ("meter id too long", {'"M-1"': '"' + "M" * 65 + '"'}, "devices[0].meter_id",
     ("M" * 65, 0)),
    ("meter id with space", {'"M-1"': '"M 1"'}, "devices[0].meter_id", ('"M 1"', 0)),
    ("duplicate bus and unit", {"unit_id = 2": "unit_id = 1"}, "devices[1].unit_id",
     ("unit_id = 1", 1)),
    ("duplicate unit by default", {'profile = "schneider_iem3155"':
     'profile = "schneider_iem3155"\n\n[[devices]]\nmeter_id = "M-4"\nbus = "tcp1"\n'
     'profile = "eastron_sdm630"'}, "devices[3].unit_id", ("[[devices]]", 3)),
    ("unit id zero", {"unit_id = 1": "unit_id = 0"}, "devices[0].unit_id", ("unit_id = 0", 0)),
    ("unit id 248", {"unit_id = 2": "unit_id = 248"}, "devices[1].unit_id",
     ("unit_id = 248", 0)),
    ("unit id type", {"unit_id = 2": 'unit_id = "2"'}, "devices[1].unit_id",
     ('unit_id = "2"', 0)),
    ("unknown bus", {'bus = "tcp1"': 'bus = "tcp9"'}, "devices[2].bus", ('"tcp9"', 0)),
    ("duplicate bus", {'name = "tcp1"': 'name = "line1"'}, "buses[1].name",
     ('name = "line1"', 1)),
    ("tcp needs host", {'host = "10.0.0.5"\n': ""}, "buses[1].host", ("[[buses]]", 1)),
    ("rtu-over-tcp needs port", {'transport = "tcp"': 'transport = "rtu-over-tcp"'},
     "buses[1].port", ("[[buses]]", 1)),
    ("rtu needs path", {'path = "/dev/ttyUSB0"\n': ""}, "buses[0].path", ("[[buses]]", 0)),
    ("rtu has no host", {'path = "/dev/ttyUSB0"': 'path = "/dev/ttyUSB0"\nhost = "x"'},
     "buses[0].host", ('host = "x"', 0)),
    ("tcp has no baud", {'host = "10.0.0.5"': 'host = "10.0.0.5"\nbaud = 9600'},
     "buses[1].baud", ("baud = 9600", 0)),
    ("transport", {'transport = "tcp"': 'transport = "udp"'}, "buses[1].transport",
     ('"udp"', 0)),
    ("baud", {'path = "/dev/ttyUSB0"': 'path = "/dev/ttyUSB0"\nbaud = 9601'},
     "buses[0].baud", ("baud = 9601", 0)),
    ("serial defaults disagree", {'unit_id = 2\nprofile = "eastron_sdm120"':
     'unit_id = 2\nprofile = "schneider_iem3155"'}, "buses[0].baud", ("[[buses]]", 0)),
    ("bus timeout", {'host = "10.0.0.5"': 'host = "10.0.0.5"\ntimeout = "soon"'},
     "buses[1].timeout", ('"soon"', 0)),
    ("bus retries", {'host = "10.0.0.5"': 'host = "10.0.0.5"\nretries = -1'},
     "buses[1].retries", ("retries", 0)),
    ("unknown profile", {'"eastron_sdm120"': '"eastron_sdm999"'}, "devices[0].profile",
     ("sdm999", 0)),
    ("missing profile file", {'"eastron_sdm120"': '"nothing/here.toml"'},
     "devices[0].profile", ("here.toml", 0)),
    ("channel subset", {'unit_id = 1\n': 'unit_id = 1\nchannels = ["water_volume_m3"]\n'},
     "devices[0].channels", ("channels =", 0)),
    ("channel subset type", {'unit_id = 1\n': 'unit_id = 1\nchannels = [1]\n'},
     "devices[0].channels", ("channels =", 0)),
    ("empty channel subset", {'unit_id = 1\n': 'unit_id = 1\nchannels = []\n'},
     "devices[0].channels", ("channels =", 0)),
    ("poll group", {'unit_id = 1\n': 'unit_id = 1\npoll = { slow = 5 }\n'},
     "devices[0].poll.slow", ("poll =", 0)),
    ("poll interval", {'unit_id = 1\n': 'unit_id = 1\npoll = { fast = 0 }\n'},
     "devices[0].poll.fast", ("poll =", 0)),
    ("max registers", {'unit_id = 1\n': 'unit_id = 1\nmax_registers_per_read = 126\n'},
     "devices[0].max_registers_per_read", ("max_registers", 0)),
    ("max registers below a channel", {'unit_id = 1\n':
     'unit_id = 1\nmax_registers_per_read = 1\n'}, "devices[0].max_registers_per_read",
     ("max_registers", 0)),
    ("url scheme", {"mqtt://127.0.0.1": "http://127.0.0.1"}, "forward.mqtt_url",
     ("mqtt_url", 0)),
    ("url port", {"127.0.0.1:1883": "127.0.0.1:99999"}, "forward.mqtt_url",
     ("mqtt_url", 0)),
    ("tls with plaintext", {"[outbox]": "[forward.tls]\nca_file = 'ca.pem'\n\n[outbox]"},
     "forward.tls", ("[forward.tls]", 0)),
    ("client cert without key", {"[outbox]":
     "[forward.tls]\ncert_file = 'c.pem'\n\n[outbox]", "mqtt://": "mqtts://"},
     "forward.tls.key_file", ("[forward.tls]", 0)),
    ("batch size beyond ingest", {"[outbox]": "batch_max_readings = 50000\n\n[outbox]"},
     "forward.batch_max_readings", ("batch_max_readings", 0)),
    ("inflight window", {"[outbox]": "max_inflight_batches = 0\n\n[outbox]"},
     "forward.max_inflight_batches", ("max_inflight", 0)),
    ("mqtt5 type", {"[outbox]": "mqtt5 = 5\n\n[outbox]"}, "forward.mqtt5", ("mqtt5", 0)),
    ("client id", {"[outbox]": "client_id = 'a b'\n\n[outbox]"}, "forward.client_id",
     ("client_id", 0)),
    ("budget", {'path = "outbox.sqlite"': 'path = "o"\nbudget = "lots"'}, "outbox.budget",
     ("budget", 0)),
    ("thin keep", {'path = "outbox.sqlite"': 'path = "o"\nthin_keep = "-5m"'},
     "outbox.thin_keep", ("thin_keep", 0)),
    ("instant policy", {'path = "outbox.sqlite"': 'path = "o"\ninstant_policy = "drop"'},
     "outbox.instant_policy", ("instant_policy", 0)),
    ("mqtt channel", {"power_w =": "kwh ="}, "mqtt_meters[0].channels.kwh",
     ("channels =", 0)),
    ("mqtt path", {'"ENERGY.Power"': '"ENERGY..Power"'}, "mqtt_meters[0].channels.power_w",
     ("channels =", 0)),
    ("ts path", {'ts_path = "Time"': 'ts_path = "Time["'}, "mqtt_meters[0].ts_path",
     ("ts_path", 0)),
    ("time zone", {'"Asia/Shanghai"': '"Mars/Olympus"'}, "mqtt_meters[0].time_zone",
     ("time_zone", 0)),
    ("wildcard topic", {"tele/plug-1/SENSOR": "tele/+/SENSOR"}, "mqtt_meters[0].topic",
     ("topic", 0)),
    ("no channels", {'channels = { energy_import_kwh = "ENERGY.Total", power_w = '
     '"ENERGY.Power" }': "channels = {}"}, "mqtt_meters[0].channels", ("channels", 0)),
    ("input client id", {"[outbox]": "[mqtt_input]\nclient_id = 'gw-gw-test'\n\n[outbox]"},
     "mqtt_input.client_id", ("client_id", 0)),
    ("meters not an array", {"[[mqtt_meters]]": "[mqtt_meters]"}, "mqtt_meters",
     ("[mqtt_meters]", 0)),
    # R25: prod refuses what would let someone read or pose as the broker.
    ("R25 insecure", PROD_TLS | {'ca_file = "ca.pem"': 'ca_file = "ca.pem"\ninsecure = true'},
     "forward.tls.insecure", ("insecure", 0)),
    ("R25 TLS without CA", PROD | {"mqtt://127.0.0.1": "mqtts://broker.example.net"},
     "forward.tls.ca_file", ("[forward]", 0)),
    ("R25 TLS table without CA", PROD_TLS | {'ca_file = "ca.pem"': 'min_version = "1.3"'},
     "forward.tls.ca_file", ("[forward.tls]", 0)),
    ("R25 TLS 1.1", PROD_TLS | {'ca_file = "ca.pem"': 'ca_file = "ca.pem"\nmin_version = 1.1'},
     "forward.tls.min_version", ("min_version", 0)),
    ("R25 plaintext off the box", PROD | {"mqtt://127.0.0.1": "mqtt://10.0.0.9"},
     "forward.mqtt_url", ("mqtt_url", 0)),
    ("R25 plaintext input broker", PROD_TLS | {"[outbox]":
     "[mqtt_input]\nurl = 'mqtt://192.168.1.2'\n\n[outbox]"}, "mqtt_input.url",
     ("url = 'mqtt://192", 0)),
    ("toml syntax", {"unit_id = 2": "unit_id = = 2"}, "toml", ("unit_id = = 2", 0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field", "where"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_name_file_line_and_field(
    changes: dict[str, str], field: str, where: tuple[str, int] | None
) -> None:
    text = edit(BASE, changes)
    with pytest.raises(SiteError) as caught:
        parse_site(text, "site.toml")
    error = caught.value
    assert error.field == field, str(error)
    assert error.file == "site.toml"
    if where is not None:
        assert error.line == line_of(text, *where), str(error)
        assert str(error).startswith(f"site.toml:{error.line}: {field}: ")


def test_r25_messages_say_why() -> None:
    with pytest.raises(SiteError, match=r"R25.*plaintext|plaintext.*R25"):
        parse_site(edit(BASE, PROD | {"mqtt://127.0.0.1": "mqtt://10.0.0.9"}))
    with pytest.raises(SiteError, match="R25"):
        parse_site(edit(BASE, PROD | {"mqtt://127.0.0.1": "mqtts://10.0.0.9"}))


# --- robustness: mutations of a valid file give a Site or a SiteError, nothing else --------

VALUES = [
    '""', '"x"', "0", "-1", "1.5", "inf", "nan", "true", "[]", "[1, \"a\"]", "{}",
    '{ a = 1 }', '"1h"', '"256MiB"', "1979-05-27T07:32:00Z", "99999999999999999999",
    '"mqtts://h"', '"tele/#"', '"../x.toml"', '"a.b[0]"', '"\\u0000"', "[[1]]", '"Mars/X"',
]  # fmt: skip
LINES = (BASE + EXAMPLE.read_text()).splitlines()


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = BASE.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        # Mostly well-formed TOML with wrong values, so the mutations reach the validation.
        action = draw(st.sampled_from(["value"] * 5 + ["delete", "duplicate", "insert", "garbage"]))
        if action == "value" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {draw(st.sampled_from(VALUES))}"
        elif action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "insert":
            lines.insert(i, draw(st.sampled_from(LINES)))
        else:
            lines[i] = draw(st.text(max_size=20))
        if not lines:
            break
    return "\n".join(lines)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_give_a_site_or_a_site_error(text: str) -> None:
    outcome: Site | SiteError
    try:
        outcome = parse_site(text, "site.toml")
    except SiteError as error:
        outcome = error
    if isinstance(outcome, SiteError):
        assert outcome.file == "site.toml"
        assert outcome.field
    else:
        assert isinstance(outcome, Site)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_site_error(text: str) -> None:
    with pytest.raises(SiteError):
        parse_site(text)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@pytest.mark.parametrize(
    ("cls", "table", "anchor", "skip", "keys"),
    [
        (ForwardConfig, "forward", 'mqtt_url = "mqtt://127.0.0.1:1883"',
         {"mqtt_url", "client_id", "tls"}, {}),
        (OutboxConfig, "outbox", 'path = "outbox.sqlite"', {"path"},
         {"budget_bytes": "budget", "thin_keep_s": "thin_keep"}),
        (Bus, "buses[1]", 'host = "10.0.0.5"', {"name", "transport", "host", "port", "serial"},
         {"timeout_s": "timeout", "backoff_max_s": "backoff_max"}),
    ],
)  # fmt: skip
def test_every_setting_of_the_model_can_be_set(
    cls: type, table: str, anchor: str, skip: set[str], keys: dict[str, str]
) -> None:
    """A field added to a config dataclass is configurable at once (or this test says why)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        assert f.default is not dataclasses.MISSING, f.name
        key = keys.get(f.name, f.name)
        value = not f.default if isinstance(f.default, bool) else f.default
        site = parse_site(edit(BASE, {anchor: f"{anchor}\n{key} = {_toml(value)}"}))
        model = {"forward": site.forward, "outbox": site.outbox, "buses[1]": site.buses["tcp1"]}
        assert getattr(model[table], f.name) == value, f.name
