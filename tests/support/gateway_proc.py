"""Run a gateway agent in its own process for kill tests: the site file's agent, lean (no CLI
imports), printing `ready` once its tasks run so a test can kill it at a random point.

    python -m tests.support.gateway_proc SITE_FILE
"""

from __future__ import annotations

import asyncio
import signal
import sys

from gateway_agent.agent import GatewayAgent
from gateway_agent.site import load_site
from meterward.logs import configure_logging


async def main(path: str) -> None:
    agent = GatewayAgent(load_site(path))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    running = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(0)
    print("ready", flush=True)
    await running


if __name__ == "__main__":
    configure_logging("WARNING", "json")
    asyncio.run(main(sys.argv[1]))
