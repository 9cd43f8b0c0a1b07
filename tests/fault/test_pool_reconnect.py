"""The shared pool survives the database link dropping: broken connections are replaced."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
import pytest

from store.pool import open_pool
from tests.conftest import DatabaseFactory
from tests.support.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def test_pool_replaces_connections_cut_by_an_outage(make_database: DatabaseFactory) -> None:
    url = make_database()
    parts = urlsplit(url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
        pool = open_pool(proxied.geturl(), min_size=2, max_size=2, name="mw-test-fault")
        try:
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            before = proxy.accepted

            proxy.stop()  # every pooled connection is cut mid-life
            with (
                pytest.raises(psycopg.OperationalError),
                psycopg.connect(proxied.geturl(), connect_timeout=2),
            ):
                pass  # and new ones are refused while the link is down
            proxy.start()  # the link comes back on the same port

            # The checkout check finds the dead connections and replaces them: the caller
            # sees a working connection, not the outage.
            for _ in range(4):
                with pool.connection(timeout=30) as conn:
                    assert conn.execute("SELECT 2").fetchone() == (2,)
            assert proxy.accepted > before
            assert pool.get_stats().get("connections_lost", 0) >= 1
        finally:
            pool.close()
