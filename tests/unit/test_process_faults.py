"""What fault tests do to the stack's processes: stop and resume a group, find a spawned child, restart."""

from __future__ import annotations

import sys
from pathlib import Path

from infra.processes import spawned_child, start_process, wait_until
from infra.stack import Stack
from xdm.config import Config

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
SPAWNER = [sys.executable, "-c", "import multiprocessing as mp, time\n"
           "if __name__ == '__main__':\n"
           "    mp.get_context('spawn').Process(target=time.sleep, args=(60,), daemon=True).start()\n"
           "    time.sleep(60)"]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_pause_stops_the_process_and_resume_lets_it_run_again(tmp_path):
    proc = start_process("sleeper", SLEEPER, tmp_path)
    try:
        proc.pause()
        wait_until(lambda: _state(proc.pid) == "T", 5, "stopped")
        proc.resume()
        wait_until(lambda: _state(proc.pid) == "S", 5, "running again")
    finally:
        proc.stop()


def test_spawned_child_finds_the_multiprocessing_child_not_the_resource_tracker(tmp_path):
    proc = start_process("spawner", SPAWNER, tmp_path)
    try:
        wait_until(lambda: spawned_child(proc.pid) is not None, 30, "spawned child")
        child = spawned_child(proc.pid)
        assert b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    finally:
        proc.stop()
    sleeper = start_process("sleeper", SLEEPER, tmp_path)
    try:
        assert spawned_child(sleeper.pid) is None
    finally:
        sleeper.stop()


def test_restart_starts_a_killed_process_again_in_its_place(tmp_path):
    stack = Stack(cfg=Config(), root=tmp_path, profile="test")
    for name in ("first", "second"):
        stack.processes.append(start_process(name, SLEEPER, tmp_path))
        stack.starters[name] = lambda name=name: start_process(name, SLEEPER, tmp_path)
    try:
        killed = stack.by_name("first")
        killed.kill()
        again = stack.restart("first")
        assert again.alive() and again.pid != killed.pid
        assert [p.name for p in stack.processes] == ["first", "second"]  # stopped in the same order as before
    finally:
        stack.stop()
