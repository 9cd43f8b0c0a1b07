"""The connection pool every server-side component shares (psycopg_pool)."""

from __future__ import annotations

from psycopg_pool import ConnectionPool


def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 8, name: str = "meterward"
) -> ConnectionPool:
    """Open a pool that checks connections on checkout and reconnects after a server restart.

    `check_connection` costs one round trip per checkout and is what turns a restarted
    server into a retried connection instead of an error in the caller.

    `reconnect_timeout` is short on purpose: psycopg_pool doubles its wait between reconnect
    attempts until that timeout, so with minutes there the pool could sit out most of a
    recovered outage between two attempts (measured: attempts at 0.3, 1.3, 3.3, 7, 15, 31,
    62, 126 s). After 10 s it gives up that series, and the caller's next request (ingest
    retries every few seconds) starts a fresh one.
    """
    pool = ConnectionPool(
        conninfo=url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        check=ConnectionPool.check_connection,
        reconnect_timeout=10.0,
        kwargs={"application_name": name},
    )
    pool.open(wait=True, timeout=30.0)
    return pool
