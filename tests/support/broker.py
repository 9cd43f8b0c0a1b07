"""A private Mosquitto for fault tests: its own port and state dir, killable at will."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {state}/
autosave_interval 1
max_queued_messages 0
max_inflight_messages 0
log_dest file {state}/mosquitto.log
log_type error
log_type warning
user {user}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """`start()`, `kill()` (SIGKILL, persistence only as of the last autosave), `terminate()`
    (graceful: the broker writes its persistence file), `start()` again on the same port."""

    def __init__(self, state_dir: Path) -> None:
        self.state = state_dir
        self.state.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.binary = binary
        user = "root"
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("mosquitto")
                os.chown(self.state, entry.pw_uid, entry.pw_gid)
                # The mosquitto user must reach the state dir through every parent.
                probe = subprocess.run(
                    ["runuser", "-u", "mosquitto", "--", "test", "-w", str(self.state)],
                    check=False,
                )
                user = "mosquitto" if probe.returncode == 0 else "root"
            except KeyError:
                pass
        (self.state / "mosquitto.conf").write_text(
            CONF.format(port=self.port, state=self.state, user=user), encoding="utf-8"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> PrivateBroker:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.state / "mosquitto.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        log = (
            (self.state / "mosquitto.log").read_text(errors="replace")
            if (self.state / "mosquitto.log").exists()
            else ""
        )
        raise RuntimeError(f"private mosquitto did not start on {self.port}: {log[-500:]}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def terminate(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
