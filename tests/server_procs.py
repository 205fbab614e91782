"""`gateway serve` as a subprocess on loopback (bench.procs.Proc), and what /proc says about
its processes.

Each server gets TMPDIR=<its tmp dir>, so its run directory (the workers' shared
files) is found, read, and removed with the test's tmp dir whatever happens.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from bench.procs import Proc, free_port

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def listeners(port: int) -> int:
    """Listening sockets on the port (each worker binds its own)."""
    with open("/proc/net/tcp", encoding="ascii") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == port)


def wait_until(check, within: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


@dataclass
class Served:
    proc: Proc
    port: int
    config: Path
    tmp: Path
    log: Path
    seen_workers: set[int] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        pids = children(self.proc.pid)
        self.seen_workers.update(pids)
        return pids

    def run_dir(self) -> Path:
        [found] = glob.glob(str(self.tmp / "gateway-run-*"))
        return Path(found)

    def per_worker(self, name: str, **labels: str) -> dict[int, float]:
        """A counter's value in each worker's own file, by pid (all labels summed but these)."""
        out: dict[int, float] = {}
        for path in glob.glob(str(self.run_dir() / "metrics" / "counter_*.db")):
            pid = int(Path(path).stem.rsplit("_", 1)[1])
            out[pid] = sum(s.value for m in MultiProcessCollector.merge([path])
                           for s in m.samples if s.name == name
                           and all(s.labels.get(k) == v for k, v in labels.items()))
        return out

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.stop(20)
        for pid in self.seen_workers:   # had the master died first (a test killed it)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def start(tmp: Path, text: str, *args: str, workers: int = 1,
          env: dict[str, str] | None = None, name: str = "gw") -> Served:
    """Start `gateway serve` on a free port; return once /ready answers on all workers."""
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "gateway.yaml"
    config.write_text(text)
    port = free_port()
    log = home / "stderr.log"
    proc = Proc(name, [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                       "--port", str(port), "--workers", str(workers), *args], log,
                env={**os.environ, "TMPDIR": str(home), **(env or {})}, cwd=ROOT).start()
    served = Served(proc, port, config, home, log)

    def ready() -> bool:
        if not proc.running:
            raise AssertionError(f"gateway exited {proc.returncode}:\n{served.stderr()}")
        try:
            with urllib.request.urlopen(served.base + "/ready", timeout=1):
                pass
        except OSError:
            return False
        if workers == 1:
            return listeners(port) == 1
        # Every worker past its app's start-up (its first health round included).
        return (len(served.workers()) == workers and
                all(f"worker {pid} ready" in served.stderr() for pid in served.workers()))
    if not wait_until(ready, 30):
        served.stop()
        raise AssertionError(f"gateway not ready:\n{served.stderr()}")
    return served


@pytest.fixture
def gateway_processes(tmp_path):
    """Start gateway processes (`start`'s arguments); every one is stopped after the test."""
    started = []

    def run(text: str, **kw):
        served = start(tmp_path, text, name=f"gw{len(started)}", **kw)
        started.append(served)
        return served
    yield run
    for served in started:
        served.stop()
