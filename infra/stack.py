"""The whole system on one machine: embedded broker and Milvus (Lite or standalone), workers, learners, server, traffic.

Used by `xdm up` and by the integration-test fixtures, so what the tests exercise is what users run.
Children get their configuration through `XDM_<SECTION>__<FIELD>` variables, the same mechanism a user
has on a multi-machine deployment.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from infra.processes import ManagedProcess, ensure_alive, free_port, port_open, start_process, wait_until
from infra.learner_settings import LearnerSettings, learner_config
from infra.services import LITE_KEEPALIVE_S, start_broker, start_milvus, start_milvus_standalone
from infra.topics import ensure_topics
from xdm.config import Config, apply_overrides

log = logging.getLogger(__name__)
# Which Milvus start_services runs: Milvus Lite (light, the default), a real Milvus standalone, or none
# ("external": the one at milvus.uri, started by someone else: a test session's server, a cluster).
MILVUS_KINDS = ("lite", "standalone", "external")


@dataclass
class Stack:
    """Started processes, in start order; stop() stops them in reverse."""

    cfg: Config
    root: Path
    profile: str
    processes: list[ManagedProcess] = field(default_factory=list)
    learner_settings: LearnerSettings = field(default_factory=dict)  # per-arm learner.* (infra/learner_settings.py)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # process name -> its Prometheus port, set before start
    starters: dict[str, Callable[[], ManagedProcess]] = field(default_factory=dict)  # name -> start it again

    def by_name(self, name: str) -> ManagedProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)

    def restart(self, name: str) -> ManagedProcess:
        """Start a crashed or stopped process again as it was started (same data dir, ports and config),
        in its place in the stop order: what a supervisor does after a crash (fault tests, bench/chaos.py)."""
        old = self.by_name(name)
        old.stop()  # a dead one: reaps what it left behind and waits for its ports
        place = self.processes.index(old)
        self.processes.remove(old)
        new = self.starters[name]()
        if new in self.processes:  # the start_* methods append what they start
            self.processes.remove(new)
        self.processes.insert(place, new)
        return new

    def stop(self) -> None:
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others; report at the end
                errors.append(f"{proc.name}: {exc}")
        self.processes.clear()
        if errors:
            raise RuntimeError("some processes did not stop cleanly: " + "; ".join(errors))

    def child_env(self) -> dict[str, str]:
        return config_env(self.cfg)

    def start_worker(self, name: str = "worker") -> ManagedProcess:
        data_dir = self.root / name
        cfg = apply_overrides(self.cfg, {"stream.data_dir": str(data_dir), **self._metrics("stream", name)})
        proc = start_process(name, _xdm(self.profile, "worker"), self.root / "logs", env=config_env(cfg))
        self.processes.append(proc)
        self.starters[name] = lambda: self.start_worker(name)
        return proc

    def start_learner(self, arm: str, variant: str) -> ManagedProcess:
        cfg = apply_overrides(learner_config(self.cfg, self.learner_settings, arm),
                              self._metrics("learner", f"learner-{arm}"))
        name = f"learner-{arm}"
        proc = start_process(name, _xdm(self.profile, "learn", "--arm", arm, "--variant", variant),
                             self.root / "logs", env=config_env(cfg))
        self.processes.append(proc)
        self.starters[name] = lambda: self.start_learner(arm, variant)
        return proc

    def metrics_url(self, name: str) -> str:
        """The Prometheus endpoint of a worker or learner started with a port in `metrics_ports`."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def _metrics(self, section: str, name: str) -> dict[str, int]:
        port = self.metrics_ports.get(name)
        return {f"{section}.metrics_port": port} if port else {}

    def start_server(self, timeout_s: float = 120.0) -> ManagedProcess:
        port = self.cfg.serving.port
        proc = start_process("server", _xdm(self.profile, "serve"), self.root / "logs",
                             address=f"127.0.0.1:{port}", ports=(port,), env=self.child_env())
        self.processes.append(proc)
        self.starters[proc.name] = lambda: self.start_server(timeout_s)

        def ready() -> bool:
            ensure_alive(proc)
            return port_open("127.0.0.1", port)

        wait_until(ready, timeout_s, "recall server")
        return proc


def start_services(root: Path, base: Config, profile: str, arms: str = "xdm:100", milvus: str = "lite") -> Stack:
    """Wipe root, start the broker and the Milvus `milvus` names (MILVUS_KINDS) on free ports, create
    topics; returns the Stack."""
    if milvus not in MILVUS_KINDS:
        raise ValueError(f"milvus is {milvus!r}; use one of {', '.join(MILVUS_KINDS)}")
    if root.exists():
        shutil.rmtree(root)  # the broker keeps topics in memory: local state from a previous run is stale
    root.mkdir(parents=True)
    stack = Stack(cfg=base, root=root, profile=profile)
    try:
        broker = start_broker(root / "logs")
        stack.processes.append(broker)
        # memory storage: a restarted broker comes back empty, topics included (stream/broker_loss.py)
        stack.starters[broker.name] = lambda: start_broker(root / "logs", port=broker.ports[0])
        stack.cfg = apply_overrides(base, {
            **_start_milvus(stack, milvus),
            "kafka.bootstrap": broker.address,
            "serving.port": free_port(),
            "serving.arms": arms,
            "learner.checkpoint_dir": str(root / "checkpoints"),
            "learner.model_store": str(root / "models"),
        })
        ensure_topics(stack.cfg)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_milvus(stack: Stack, kind: str) -> dict[str, Any]:
    """Start the Milvus `kind` names, restartable on its ports and data; the milvus.* settings it needs."""
    if kind == "external":
        return {}
    data, logs = stack.root / "milvus", stack.root / "logs"
    if kind == "lite":
        proc = start_milvus(data, logs)
        stack.starters[proc.name] = lambda: start_milvus(data, logs, port=proc.ports[0])
    else:
        proc = start_milvus_standalone(data, logs)
        # every port as before: its embedded etcd still lists the components at their old addresses
        stack.starters[proc.name] = lambda: start_milvus_standalone(data, logs, ports=proc.ports)
    stack.processes.append(proc)
    # Milvus Lite refuses pymilvus's keepalive pings; a real Milvus takes them (milvus.keepalive_s)
    return {"milvus.uri": proc.address, **({"milvus.keepalive_s": LITE_KEEPALIVE_S} if kind == "lite" else {})}


def config_env(cfg: Config) -> dict[str, str]:
    """The whole resolved config as XDM_<SECTION>__<FIELD> variables for a child process."""
    env = {}
    for section, values in dataclasses.asdict(cfg).items():
        for name, value in values.items():
            env[f"XDM_{section.upper()}__{name.upper()}"] = _env_value(value)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _xdm(profile: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "xdm", "--profile", profile, *args]
