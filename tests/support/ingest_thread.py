"""An ingest worker on a thread of the test process, for tests that need real acks."""

from __future__ import annotations

import threading
import uuid

from ingest.consumer import Consumer
from ingest.service import IngestWorker
from store.pool import open_pool


class ThreadWorker:
    def __init__(self, db_url: str, mqtt_url: str, *, mqtt5: bool = True) -> None:
        self.pool = open_pool(db_url, min_size=1, max_size=2, name="mw-test-ingest")
        self.consumer = Consumer(mqtt_url, client_id=f"ingest-{uuid.uuid4().hex[:8]}", mqtt5=mqtt5)
        self.worker = IngestWorker(self.pool, self.consumer)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        assert self.consumer.connected.wait(15)

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(30)
        self.pool.close()
