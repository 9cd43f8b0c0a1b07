"""Run an ingest worker in its own process for fault tests, optionally killing itself (SIGKILL)
the Nth time it passes a fault point.

    python -m tests.support.ingest_proc DB_URL MQTT_URL CLIENT_ID [POINT N]
"""

from __future__ import annotations

import os
import signal
import sys

from ingest.consumer import Consumer
from ingest.service import IngestWorker
from meterward.logs import configure_logging
from store.pool import open_pool


def main() -> None:
    db_url, mqtt_url, client_id = sys.argv[1:4]
    point, after = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else (None, 0)
    configure_logging("INFO", "json")
    pool = open_pool(db_url, min_size=1, max_size=2, name=client_id)
    worker = IngestWorker(pool, Consumer(mqtt_url, client_id=client_id, receive_maximum=100))
    seen = 0

    def hook(at: str) -> None:
        nonlocal seen
        if at == point:
            seen += 1
            if seen == after:
                os.kill(os.getpid(), signal.SIGKILL)

    worker.fault_hook = hook
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.run()
    pool.close()


if __name__ == "__main__":
    main()
