"""A real DNS server for the tests: Debian's dnsmasq on 127.0.0.1 and a free port.

Names come from a hosts file (`--addn-hosts`) the test rewrites while the gateway
runs; SIGHUP makes dnsmasq read it again. Names under `.test` that the file does not
hold get NXDOMAIN (`--local=/test/`); nothing is ever forwarded anywhere.
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path

from bench.procs import Proc, free_port
from tests.conftest import unavailable


class DnsServer:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("dnsmasq") or (
            "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
        if binary is None:
            unavailable("dnsmasq is not installed (apt-get install dnsmasq)",
                        "GATEWAY_REQUIRE_DNSMASQ")
        self.hosts = tmp / "dns-hosts"
        self.hosts.write_text("")
        self.port = free_port()
        self.proc = Proc("dnsmasq", [
            binary, "--no-daemon", "--port", str(self.port), "--listen-address", "127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts", "--addn-hosts", str(self.hosts),
            "--local=/test/", "--conf-file=/dev/null", "--pid-file=", "--cache-size=0"],
            tmp / "dnsmasq.log")

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        self.proc.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # bounded: its TCP port answers once it serves
            if not self.proc.running:
                raise AssertionError(self.proc.tail())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("dnsmasq did not start\n" + self.proc.tail())

    def set(self, name: str, *addresses: str) -> None:
        """`name` resolves to exactly these addresses from now on (none: NXDOMAIN)."""
        self.hosts.write_text("".join(f"{a} {name}\n" for a in addresses))
        if self.proc.running:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.proc.stop(5)
