"""`meterward gateway`: the edge agent that polls meters and forwards every reading."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from gateway_agent.site import Site

gateway_app = typer.Typer(
    help="Poll meters over Modbus/MQTT, keep every reading in a durable outbox, forward it.",
    no_args_is_help=True,
)

SiteOption = Annotated[
    Path,
    typer.Option(
        "--site",
        "-c",
        help="The site file: buses, devices, MQTT meters, outbox, broker"
        " (see ops/gateway/site.example.toml).",
        show_default=False,
    ),
]


def _load(path: Path) -> Site:
    from gateway_agent.site import SiteError, load_site  # noqa: PLC0415

    try:
        return load_site(path)
    except SiteError as exc:
        from meterward.cli import CliError  # noqa: PLC0415 - avoid an import cycle

        raise CliError(str(exc)) from None


@gateway_app.command("run")
def run(site_file: SiteOption) -> None:
    """Run the agent until SIGTERM/Ctrl-C; the poll cycle under way is finished and kept.

    Readings wait in the outbox until ingest acknowledges them after its database commit,
    across restarts and outages of any length the outbox budget allows.
    """
    from gateway_agent.agent import GatewayAgent, metrics_registry  # noqa: PLC0415

    site = _load(site_file)

    async def main() -> None:
        agent = GatewayAgent(site)
        if site.metrics_port is not None:
            from prometheus_client import start_http_server  # noqa: PLC0415

            start_http_server(site.metrics_port, addr="127.0.0.1", registry=metrics_registry(agent))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)

    asyncio.run(main())


@gateway_app.command("check")
def check(site_file: SiteOption) -> None:
    """Probe every device once; print decoded values with units and plausibility.

    Suggests the word order when the configured one gives an implausible voltage or
    frequency. Exits 1 when a device does not answer or a value is implausible.
    """
    from gateway_agent.check import check_site, render_table  # noqa: PLC0415

    site = _load(site_file)
    rows = asyncio.run(check_site(site))
    print(render_table(rows))  # noqa: T201
    bad = [r for r in rows if r.quality in ("comm_error", "out_of_range")]
    if bad:
        meters = sorted({r.meter_id for r in bad})
        print(  # noqa: T201
            f"{len(bad)} of {len(rows)} channels need attention on {len(meters)} device(s):"
            f" {', '.join(meters[:10])}{' ...' if len(meters) > 10 else ''}"
        )
        raise typer.Exit(1)
    print(f"all {len(rows)} channels of {len(site.devices)} devices answer plausibly")  # noqa: T201
