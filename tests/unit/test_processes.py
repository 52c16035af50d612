"""infra.processes: children outlive the thread that started them and die with the process."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from infra.milvus_standalone import StandalonePorts
from infra.processes import child_pids, free_ports, start_process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_child_outlives_the_thread_that_started_it(tmp_path):
    """The thread lingers so the child has set its death signal before the thread ends: without the
    long-lived spawner thread the child would be killed when this thread returns."""
    started: list = []

    def launch() -> None:
        started.append(start_process("sleeper", SLEEPER, tmp_path))
        time.sleep(0.5)

    launcher = threading.Thread(target=launch)
    launcher.start()
    launcher.join()
    try:
        time.sleep(0.5)
        assert started[0].alive(), f"child exited with {started[0].popen.returncode} when its launcher ended"
    finally:
        for proc in started:
            proc.stop()


def test_a_child_dies_when_its_parent_process_is_killed(tmp_path):
    """The orphan guard still holds: SIGKILL the parent and its child goes too."""
    pid_file = tmp_path / "child.pid"
    parent_code = (
        "import sys, time, pathlib; sys.path.insert(0, sys.argv[1]);"
        "from infra.processes import start_process;"
        f"p = start_process('sleeper', {SLEEPER!r}, pathlib.Path(sys.argv[2]));"
        "pathlib.Path(sys.argv[3]).write_text(str(p.pid)); time.sleep(60)"
    )
    repo = str(Path(__file__).resolve().parents[2])
    parent = start_process("parent", [sys.executable, "-c", parent_code, repo, str(tmp_path), str(pid_file)], tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "parent never started its child"
            time.sleep(0.1)
        child_pid = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _running(child_pid):
            assert time.monotonic() < deadline, "child outlived its killed parent"
            time.sleep(0.1)
    finally:
        parent.stop()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_child_pids_lists_a_started_child(tmp_path):
    proc = start_process("sleeper", SLEEPER, tmp_path)
    try:
        assert proc.pid in child_pids(os.getpid())
    finally:
        proc.stop()
    assert proc.pid not in child_pids(os.getpid())


def test_ports_drawn_together_are_distinct():
    """A Milvus standalone takes 12 ports; drawn one at a time, a released port could come back twice (a CI
    run's second standalone was given one port twice and aborted)."""
    for _ in range(50):
        ports = StandalonePorts.free().all()
        assert len(set(ports)) == len(ports) == 12, ports
    assert len(set(free_ports(64))) == 64
