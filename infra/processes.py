"""Child processes of the embedded stack: start on loopback, wait until healthy, always stop cleanly.

Every child runs in its own process group so a stop reaches whatever it spawned too (no orphans), and a
stop waits until the child's port is released, so the next start on that port cannot collide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from xdm.errors import ServiceError

log = logging.getLogger(__name__)

# A child gets SIGKILL when its parent dies, so a killed `xdm up` or test run leaves no orphans (Linux,
# util-linux's setpriv). KILL, not TERM: a Faust worker whose broker vanished with the parent can hang in
# its graceful shutdown. Not a preexec_fn: that forces fork() instead of vfork(), and gRPC's at-fork
# handlers abort a forked child of a process with live gRPC channels (seen here: epoll_wait EBADF, -6).
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()
# The death signal follows the parent *thread*, not the process: a child started from a thread that then
# ends is killed with it (seen: a test launched Milvus Lite from a short-lived thread and the server died
# at birth, one run in a few). So every child is spawned by this one thread, which lives as long as the
# process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xdm-spawner")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now on host (the kernel's choice)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports free now on host. Each is held bound until all are chosen: a port released before
    the next is asked for can be handed out again (a Milvus standalone given one port twice aborts)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


def child_pids(pid: int) -> list[int]:
    """Direct children of a running process, from every thread's /proc children list (Linux); a thread
    that ends while they are read is skipped."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return children


def spawned_child(pid: int) -> int | None:
    """The running child a process started with multiprocessing's spawn (not its resource tracker, not a
    killed one its parent has not reaped yet), if any."""
    for child in child_pids(pid):
        try:
            if running(child) and b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except FileNotFoundError:  # ended while the children were read
            continue
    return None


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed process stays one until its parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll check() until it is true; raise ServiceError naming `what` after timeout_s.

    A ServiceError raised by check() (a child died) ends the wait at once; other errors are retried.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ServiceError:
            raise
        except Exception as exc:  # a health probe may fail in many ways while a service starts
            last_error = exc
        time.sleep(interval_s)
    detail = f" (last error: {last_error})" if last_error else ""
    raise ServiceError(f"{what} not ready after {timeout_s:.0f} s{detail}")


@dataclass
class ManagedProcess:
    """A started child process and where it listens."""

    name: str
    popen: subprocess.Popen
    address: str
    log_path: Path
    ports: tuple[int, ...] = field(default_factory=tuple)
    stop_timeout_s: float = 15.0  # stop(): SIGKILL after this many seconds past SIGTERM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole group at once (fault tests: a crash, not a shutdown)."""
        _signal_group(self.popen, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP the whole group (fault tests: a process that hangs without dying); `resume` undoes it."""
        _signal_group(self.popen, signal.SIGSTOP)

    def resume(self) -> None:
        _signal_group(self.popen, signal.SIGCONT)

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the group, SIGKILL after timeout_s (stop_timeout_s), then wait for its ports to close."""
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        if self.alive():
            _signal_group(self.popen, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("process did not stop on SIGTERM; killing", extra={"proc": self.name})
                _signal_group(self.popen, signal.SIGKILL)
                self.popen.wait(timeout=10)
        _signal_group(self.popen, signal.SIGKILL)  # children that outlived their parent
        for port in self.ports:
            wait_until(lambda p=port: not port_open("127.0.0.1", p), 15, f"port {port} of {self.name} released")


def start_process(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    address: str = "",
    ports: Sequence[int] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stop_timeout_s: float = 15.0,
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    handle = open(log_path, "ab")
    popen = _SPAWNER.submit(
        subprocess.Popen,
        [*_DIE_WITH_PARENT, *argv],
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
        cwd=str(cwd) if cwd else None,
    ).result()
    handle.close()
    log.info("started", extra={"proc": name, "pid": popen.pid, "address": address})
    return ManagedProcess(name=name, popen=popen, address=address, log_path=log_path, ports=tuple(ports),
                          stop_timeout_s=stop_timeout_s)


def ensure_alive(proc: ManagedProcess) -> None:
    if not proc.alive():
        raise ServiceError(f"{proc.name} exited with code {proc.popen.returncode}; last log lines:\n{proc.log_tail()}")


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
