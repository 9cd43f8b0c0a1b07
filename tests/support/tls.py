"""Throwaway PKI for TLS tests (openssl CLI): a CA, a server cert for 127.0.0.1/localhost and
a client cert, plus a private Mosquitto with a TLS listener that requires client certs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.broker import PrivateBroker, _free_port


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> Pki:
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
         "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *ext, cwd=d)  # fmt: skip
    for path in d.iterdir():
        path.chmod(0o644)  # the broker may run as the mosquitto user
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


class TlsBroker(PrivateBroker):
    """A private Mosquitto whose second listener speaks TLS and requires a client cert."""

    def __init__(self, state_dir: Path, pki: Pki) -> None:
        super().__init__(state_dir)
        self.tls_port = _free_port()
        conf = self.state / "mosquitto.conf"
        conf.write_text(
            conf.read_text(encoding="utf-8") + f"listener {self.tls_port} 127.0.0.1\n"
            f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            "require_certificate true\ntls_version tlsv1.2\n",
            encoding="utf-8",
        )

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"
