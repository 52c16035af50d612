"""The model store: one user tower file per published version, and a LATEST pointer per arm.

Files are written to a temporary name and renamed, so a reader never opens half a tower; LATEST is
written only after the version's item vectors are fully loaded in the vector store.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from xdm.v1 import events_pb2


@dataclass(frozen=True)
class VersionInfo:
    """What a server needs to pair a user tower with its item vectors."""

    arm: str
    version: int
    collection: str
    tower_uri: str
    published_ms: int
    trained_samples: int
    items: int


def encode_announcement(info: VersionInfo) -> bytes:
    """The versions-topic record that announces a published version."""
    return events_pb2.ModelVersion(arm=info.arm, version=info.version, collection=info.collection,
                                   tower_uri=info.tower_uri, published_ms=info.published_ms,
                                   trained_samples=info.trained_samples, items=info.items).SerializeToString()


def decode_announcement(payload: bytes) -> VersionInfo:
    """Inverse of encode_announcement; raises google.protobuf's DecodeError on a malformed record."""
    msg = events_pb2.ModelVersion()
    msg.ParseFromString(payload)
    return VersionInfo(arm=msg.arm, version=msg.version, collection=msg.collection, tower_uri=msg.tower_uri,
                       published_ms=msg.published_ms, trained_samples=msg.trained_samples, items=msg.items)


def tower_path(store: str, arm: str, version: int) -> Path:
    return Path(store) / arm / f"tower-v{version:06d}.pt"


def save_tower(store: str, arm: str, version: int, payload: dict[str, Any]) -> str:
    path = tower_path(store, arm, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return str(path)


def load_tower(uri: str) -> dict[str, Any]:
    return torch.load(uri, map_location="cpu", weights_only=False)


def write_latest(store: str, info: VersionInfo) -> None:
    path = Path(store) / info.arm / "LATEST.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, path)


def read_latest(store: str, arm: str) -> VersionInfo | None:
    path = Path(store) / arm / "LATEST.json"
    if not path.exists():
        return None
    return VersionInfo(**json.loads(path.read_text()))


def drop_towers_before(store: str, arm: str, keep_from: int) -> None:
    for path in (Path(store) / arm).glob("tower-v*.pt"):
        version = int(path.stem.split("-v")[1])
        if version < keep_from:
            path.unlink(missing_ok=True)


@dataclass
class Tower:
    """A loaded user tower: the model (inference mode), its vocabulary and the version it belongs to."""

    model: Any  # learner.model.XDM
    vocab: Any  # learner.batch.Vocabulary
    info: VersionInfo
    popular: list[str]  # most frequent label items at publish time (cold-start fallback)
    index: Any = None  # serving's exact in-memory copy of this version's item vectors, when it keeps one
    encode: Any = None  # serving's traced model.user_vector_from_q when it made one, else that method is used
    encodings: Any = None  # serving's kept q_i and vocabulary rows per item key (serving/item_encodings.py)


def tower_payload(model, vocab, info: VersionInfo, variant: str, popular: list[str]) -> dict[str, Any]:
    """What a server needs to rebuild the user tower of one version (CPU tensors)."""
    return {
        "format": 1,
        "variant": variant,
        "model_config": asdict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": vocab.state_dict(),
        "info": asdict(info),
        "popular": list(popular),
    }


def tower_from_payload(payload: dict[str, Any]) -> Tower:
    from learner.batch import Vocabulary
    from learner.model import XDM, ModelConfig

    cfg = ModelConfig(**payload["model_config"])
    vocab = Vocabulary(cfg.profile_field_names)
    vocab.load_state_dict(payload["vocab"])
    model = XDM(cfg, vocab.sizes())
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Tower(model=model, vocab=vocab, info=VersionInfo(**payload["info"]), popular=list(payload["popular"]))
