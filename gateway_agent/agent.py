"""The gateway agent: what runs on the box at a property.

    meters ──Modbus──▶ Poller ────┐
    meters ──MQTT────▶ MqttInput ─┴─▶ Outbox (SQLite) ──▶ Forwarder ──▶ broker ──▶ ingest
                                        ▲                                            │
                                        └────── delete on ingest's app ack ◀─────────┘

A cycle's samples are "accepted" once the outbox commits them; from then on only an
application ack from ingest (sent after its database COMMIT) removes them. The status
heartbeat carries per-device health and the outbox depth; Prometheus metrics are read from
the components' own counters at scrape time, so there is one count of everything.

Shutdown (SIGTERM): the poller finishes the cycle under way and the outbox commits it; then
the inputs and the forwarder stop. Whatever was not yet acknowledged stays in the outbox
for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gateway_agent.clock import Clock, SystemClock
from gateway_agent.forwarder import Forwarder
from gateway_agent.mqtt_input import MqttInput
from gateway_agent.outbox import Outbox
from gateway_agent.poller import LineFactory, Poller
from gateway_agent.sample import Sample
from gateway_agent.site import Site

log = structlog.get_logger("meterward.gateway")


class GatewayAgent:
    """Poller and MQTT input into the outbox, the forwarder out of it.

    `clock` times polls and stamps readings; `forward_clock` (default: `clock`) times the
    forwarder's batch ages, rates and ack timeouts. `line_factory` replaces the Modbus lines
    (tests, benchmarks).
    """

    def __init__(
        self,
        site: Site,
        *,
        clock: Clock | None = None,
        forward_clock: Clock | None = None,
        line_factory: LineFactory | None = None,
        boot_id: uuid.UUID | None = None,
    ) -> None:
        self.site = site
        self.clock = clock or SystemClock()
        self.boot_id = boot_id or uuid.uuid4()
        self.outbox = Outbox(site.outbox, boot_id=self.boot_id, clock=self.clock)
        self.poller = Poller(site, self.accept, self.clock, line_factory=line_factory)
        self.mqtt_input: MqttInput | None = None
        if site.mqtt_meters:
            broker = site.input_broker()
            self.mqtt_input = MqttInput(
                broker.url,
                site.mqtt_meters,
                self.accept,
                mqtt5=broker.mqtt5,
                client_id=broker.client_id,
                clock=self.clock,
                tls=broker.tls,
            )
        self.forwarder = Forwarder(
            site.forward,
            self.outbox,
            gateway_id=site.gateway_id,
            status=self.status,
            clock=forward_clock or self.clock,
        )

    async def accept(self, samples: Sequence[Sample]) -> None:
        """One cycle into the outbox, in one transaction, off the event loop (fsync)."""
        if not samples:
            return
        # The outbox logs and counts any policy action itself.
        await asyncio.to_thread(self.outbox.append, samples)
        self.forwarder.notify()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop`; the poll cycle under way is finished and committed first."""
        forward_stop = asyncio.Event()
        forwarding = asyncio.create_task(self.forwarder.run(forward_stop), name="forwarder")
        inputs = [asyncio.create_task(self.poller.run(stop), name="poller")]
        if self.mqtt_input is not None:
            inputs.append(asyncio.create_task(self.mqtt_input.run(stop), name="mqtt-input"))
        log.info(
            "gateway started",
            gateway=self.site.gateway_id,
            boot_id=str(self.boot_id),
            devices=len(self.site.devices),
            mqtt_meters=len(self.site.mqtt_meters),
            outbox_rows=self.outbox.rows(),
        )
        try:
            # The inputs return once `stop` is set and their cycle is committed; the forwarder
            # only ends when told to, so its ending first (or any exception) is a bug to surface.
            pending: set[asyncio.Task[None]] = {*inputs, forwarding}
            while not all(task.done() for task in inputs):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        raise error
                    if task is forwarding:
                        raise RuntimeError("the forwarder stopped on its own")
        finally:
            stop.set()
            await asyncio.gather(*inputs, return_exceptions=True)
            forward_stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(forwarding, 15)
            if not forwarding.done():
                forwarding.cancel()
                with contextlib.suppress(BaseException):
                    await forwarding
            await asyncio.to_thread(self.outbox.close)
            log.info(
                "gateway stopped",
                gateway=self.site.gateway_id,
            )

    def status(self) -> Mapping[str, Any]:
        """The heartbeat's body: who we are, per-device health, outbox depth, counters."""
        stats = self.outbox.stats()
        fwd = self.forwarder.stats()
        return {
            "gateway_id": self.site.gateway_id,
            "boot_id": str(self.boot_id),
            "ts": self.clock.now(),
            "outbox": {
                "rows": stats.rows,
                "used_bytes": stats.used_bytes,
                "budget_bytes": stats.budget_bytes,
                "fill": round(stats.fill, 4),
                "oldest_ts": stats.oldest_ts,
                "dropped_total": stats.dropped_total,
            },
            "devices": dict(self.poller.health_json()),
            "poller": self.poller.stats.to_json(),
            "forwarder": {
                "connected": fwd.connected,
                "inflight": fwd.inflight,
                "backlog_pending": fwd.backlog_pending,
                "last_ack_at": fwd.last_ack_at,
                "resends": fwd.resends,
            },
        }


def _numbers(obj: object) -> Iterator[tuple[str, float]]:
    """Numeric fields of a stats dataclass."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, int | float):  # bool is an int: connected -> 1.0
            yield f.name, float(value)


class AgentCollector(Collector):
    """Prometheus view of a running agent's counters, read at scrape time.

    Poller counters are cumulative since start; the outbox's `*_total` fields too; the rest
    are gauges (depth, fill, connection state).
    """

    def __init__(self, agent: GatewayAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        gw = self.agent.site.gateway_id
        parts: list[tuple[str, object, bool]] = [
            ("poller", self.agent.poller.stats, True),
            ("outbox", self.agent.outbox.stats(), False),
            ("forwarder", self.agent.forwarder.stats(), False),
        ]
        if self.agent.mqtt_input is not None:
            parts.append(("mqtt_input", self.agent.mqtt_input.stats, True))
        for component, stats, all_counters in parts:
            for name, value in _numbers(stats):
                metric = f"meterward_gateway_{component}_{name}"
                if all_counters or name.endswith("_total"):
                    family: Metric = CounterMetricFamily(
                        metric.removesuffix("_total"), f"{component} {name}", labels=["gateway"]
                    )
                else:
                    family = GaugeMetricFamily(metric, f"{component} {name}", labels=["gateway"])
                family.add_metric([gw], value)  # type: ignore[attr-defined]
                yield family
        failing = GaugeMetricFamily(
            "meterward_gateway_devices_failing",
            "devices whose last read failed",
            labels=["gateway"],
        )
        failing.add_metric([gw], sum(1 for h in self.agent.poller.health.values() if h.failing))
        yield failing


def metrics_registry(agent: GatewayAgent) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    return registry
