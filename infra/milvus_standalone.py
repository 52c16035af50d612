"""The files a Milvus standalone process needs: its binary, unpacked once per machine, and a config whose
every port is one this stack chose.

The PyPI package `milvus` ships the real Milvus standalone (embedded etcd, local storage, rocksmq) as
xz-compressed binaries, and its `milvus-server` script unpacks them into each data directory and lets
ports default. Both are unfit for a stack that starts several of them on one machine: the unpack costs
seconds per data dir, and the embedded etcd listens on 2379 and 2380 whatever `--etcd-port` says (seen:
a server given --etcd-port 57133 listened on 2379/2380), so a second server collides with the first. So
the stack runs the binary itself: unpacked once into a cache, etcd's listeners set by an etcd config file,
every other port written into milvus.yaml, and the HTTP (health, metrics) port through METRICS_PORT.
etcd listens on loopback; Milvus 2.3's gRPC and HTTP servers listen on every interface (no setting says
otherwise), without authorization unless milvus.yaml's common.security.authorizationEnabled is set: on a
machine reachable from a network, firewall these ports.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import milvus

from infra.processes import free_ports

# Milvus's graceful stop waits on components that retry each other for minutes (seen: > 30 s after
# SIGTERM with nothing to flush); past this many seconds it quits by itself.
GRACEFUL_STOP_S = 3
# Components that advertise an address to the others: loopback, so a machine without a routable
# interface (a sandbox, a laptop offline) works and the address never depends on which interface is first.
ADVERTISING_SECTIONS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


@dataclass(frozen=True)
class StandalonePorts:
    """Every port one Milvus standalone process listens on (names as milvus.yaml's template has them)."""

    proxy_port: int  # the one clients dial (milvus.uri)
    proxy_internal_port: int
    root_coord_port: int
    query_coord_port: int
    query_node_port: int
    index_coord_port: int
    index_node_port: int
    data_coord_port: int
    data_node_port: int
    etcd_port: int  # embedded etcd's client listener
    etcd_peer_port: int  # ... and its peer listener (a one-member cluster still opens it)
    http_port: int  # /healthz and /metrics

    @classmethod
    def free(cls) -> "StandalonePorts":
        """Distinct ports the kernel finds free now."""
        return cls(*free_ports(len(cls.__dataclass_fields__)))

    def all(self) -> tuple[int, ...]:
        """In field order, proxy_port first: StandalonePorts(*ports.all()) is ports again."""
        return tuple(asdict(self).values())


def binary_dir(cache_root: Path | None = None) -> Path:
    """The unpacked binary and its libraries, unpacked on first use into a per-version cache.

    Unpacked into a temporary sibling and renamed into place, so a process that finds the directory
    finds it whole, and two processes unpacking at once both end with one good copy.
    """
    target = (cache_root or _cache_root()) / f"milvus-{milvus.__version__}" / "bin"
    if (target / "milvus").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="bin-", dir=target.parent))
    try:
        for packed in (Path(milvus.__file__).parent / "data" / "bin").glob("*.lzma"):
            unpacked = staging / packed.name.removesuffix(".lzma")
            with lzma.open(packed) as src, open(unpacked, "wb") as dst:
                shutil.copyfileobj(src, dst)
            unpacked.chmod(0o755)
        os.rename(staging, target)
    except OSError:
        if not (target / "milvus").exists():  # not merely another process's rename winning the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_config(data_dir: Path, ports: StandalonePorts) -> Path:
    """milvus.yaml and the embedded etcd's config under data_dir/configs; data and logs under data_dir."""
    config = milvus.MilvusServerConfig(data_dir=str(data_dir))
    for name, port in _template_ports(ports).items():
        config.set(name, port)
    for section in ADVERTISING_SECTIONS:
        config.set(f"{section}.ip", "127.0.0.1")
    config.set("common.gracefulStopTimeout", GRACEFUL_STOP_S)
    # not config.resolve(): its trial bind without SO_REUSEADDR fails on a port a stopped server's
    # connections still hold in TIME_WAIT (seen on a restart), where the server's own listeners succeed
    config.resolve_storage()
    config.write_config()
    etcd = f"http://127.0.0.1:{ports.etcd_port}"
    peer = f"http://127.0.0.1:{ports.etcd_peer_port}"
    etcd_config = data_dir / "configs" / "embed-etcd.yaml"
    etcd_config.write_text(
        f"name: default\nlisten-client-urls: {etcd}\nadvertise-client-urls: {etcd}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n")
    return etcd_config


def standalone_env(data_dir: Path, ports: StandalonePorts, binaries: Path, etcd_config: Path) -> dict[str, str]:
    """The variables `milvus run standalone` reads besides its config file."""
    return {
        "DEPLOY_MODE": "STANDALONE",
        "MILVUSCONF": str(data_dir / "configs"),
        "ETCD_CONFIG_PATH": str(etcd_config),
        "METRICS_PORT": str(ports.http_port),
        "MILVUS_RUN_DIR": str(data_dir / "run"),
        "LD_LIBRARY_PATH": ":".join(p for p in (str(binaries), os.environ.get("LD_LIBRARY_PATH", "")) if p),
    }


def _template_ports(ports: StandalonePorts) -> dict[str, int]:
    values = asdict(ports)
    return {name: values[name] for name in values if name not in ("etcd_peer_port", "http_port")}


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xdm-recall"
