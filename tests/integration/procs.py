"""The ``fabric`` command run as a user runs it, watched: its output, and every process it
started (so a test can say that nothing outlived it)."""

import os
import re
import subprocess
import sys
import threading
import time

import psutil

FABRIC = [sys.executable, "-m", "fabric.cli"]


class Watched:
    """A CLI run whose whole process tree is recorded while it lives."""

    def __init__(self, *args, env: dict | None = None):
        self.proc = subprocess.Popen([*FABRIC, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.seen: dict[int, psutil.Process] = {}
        self.lines: list[str] = []
        self._stop = False
        threading.Thread(target=self._watch, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()

    def _watch(self):
        root = psutil.Process(self.proc.pid)
        while not self._stop:
            try:
                for p in root.children(recursive=True):
                    self.seen.setdefault(p.pid, p)
            except psutil.Error:
                pass
            time.sleep(0.3)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if any(re.search(pattern, line) for line in self.lines):
                return True
            time.sleep(0.5)
        return any(re.search(pattern, line) for line in self.lines)

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._stop = True
        time.sleep(1)
        return rc

    def kill_tree(self) -> int:
        """SIGKILL the run and everything it started (a machine lost, not a shutdown).
        Returns how many processes were killed."""
        try:
            tree = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(tree, timeout=30)
        self.finish(timeout=30)
        return len(tree)

    def survivors(self) -> list[str]:
        out = []
        for pid, p in self.seen.items():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                pass
        return out

    @property
    def output(self) -> str:
        return "".join(self.lines)


def assert_nothing_left_behind(address: str | None, port: int) -> None:
    """No port held, no pointer to the dead cluster, and a plain Ray program starts its own."""
    from fabric.cluster import port_in_use
    from fabric.internals import ray_address_file

    assert not port_in_use("127.0.0.1", port), f"port {port} still held"
    pointer = ray_address_file()
    if address and os.path.exists(pointer):
        assert open(pointer).read().strip() != address, f"{pointer} still names {address}"
    plain = subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=1); "
                            "print('cpus', ray.cluster_resources()['CPU']); ray.shutdown()"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert plain.returncode == 0 and "cpus 1.0" in plain.stdout, plain.stdout + plain.stderr[-2000:]
