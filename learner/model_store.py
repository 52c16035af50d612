"""The model store: one user tower file per published version, and a LATEST pointer per arm.

Files are written to a temporary name and renamed, so a reader never opens half a tower; LATEST is
written only after the version's item vectors are fully loaded in the vector store.

Nothing a message names is executed or opened as named. Servers learn of versions from the versions topic
and from LATEST.json, which anyone who can write there controls, so: an announcement is checked field by
field (`validate_announcement`); a tower's file is found from (store, arm, version) by `tower_path`, never
from the announcement's `tower_uri`; and a tower file holds only tensors and plain data, read with torch's
weights-only unpickler, which builds no objects of other classes and so runs no code a file names.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from learner.vector_store import collection_name
from xdm.config import MilvusConfig
from xdm.errors import XdmError
from xdm.model_config import ModelConfig
from xdm.v1 import events_pb2

# 2: weights as tensors and all else one JSON header. Format 1 pickled the rest as containers and was read
# with the full unpickler; its files are refused with a message, and the learner's next publish replaces them.
TOWER_FORMAT = 2
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a file-name component: no separators, no ..
MAX_VERSION = 2**31 - 1  # versions count publishes; a larger one is a forged or corrupt record


class AnnouncementRejected(XdmError):
    """A version announcement (a versions-topic record or LATEST.json) a server must not act on. `code` is
    one of a fixed set (a metric label); the message says what was wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TowerFileError(XdmError):
    """A tower file that is not a tower of the current format for the version asked for."""


@dataclass(frozen=True)
class VersionInfo:
    """What a server needs to pair a user tower with its item vectors."""

    arm: str
    version: int
    collection: str
    # Where the learner wrote the tower, for people and logs. Servers never open it: they derive the path
    # with tower_path from their own learner.model_store, which is also the right path when a server mounts
    # the shared store elsewhere than the learner does (a strict equality check would reject those).
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


def validate_announcement(info: VersionInfo, arms: Collection[str], milvus: MilvusConfig) -> None:
    """Raise AnnouncementRejected unless `info` names one of `arms` (the learners this server serves), a
    version in [1, MAX_VERSION], and the collection the learner's publish creates for that version (so a
    record cannot point a server at another arm's or another version's item vectors); counts must not be
    negative. tower_uri is not checked: it is never used to find the tower."""
    if info.arm not in arms:
        raise AnnouncementRejected("unknown_arm", f"arm {info.arm[:80]!r} is not served here (serving {', '.join(arms)})")
    if not 1 <= info.version <= MAX_VERSION:
        raise AnnouncementRejected("version_out_of_range", f"version {info.version} is outside [1, {MAX_VERSION}]")
    expected = collection_name(milvus, info.arm, info.version)
    if info.collection != expected:
        raise AnnouncementRejected("wrong_collection", f"collection {info.collection[:120]!r} is not {expected!r}, "
                                                       f"the collection of version {info.version} of arm {info.arm}")
    for name in ("published_ms", "trained_samples", "items"):
        if getattr(info, name) < 0:
            raise AnnouncementRejected("negative_count", f"{name} is negative ({getattr(info, name)})")


def tower_path(store: str, arm: str, version: int) -> Path:
    """The one place a version's tower lives; `arm` must be a plain name, so the path stays in the store."""
    if not ARM_NAME.fullmatch(arm):
        raise ValueError(f"arm {arm[:80]!r} is not a plain name (letters, digits, _ . -)")
    return Path(store) / arm / f"tower-v{version:06d}.pt"


def save_tower(store: str, arm: str, version: int, payload: dict[str, Any]) -> str:
    """Write a version's tower; FileExistsError if it has one: servers may hold that file's model, so a
    version's tower is never rewritten (publish under a new number)."""
    path = tower_path(store, arm, version)
    if path.exists():
        raise FileExistsError(f"{path} exists: version {version} of arm {arm} was published or attempted before "
                              f"and is never rewritten; publish under a higher version number")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return str(path)


def latest_path(store: str, arm: str) -> Path:
    return Path(store) / arm / "LATEST.json"


def write_latest(store: str, info: VersionInfo) -> None:
    path = latest_path(store, info.arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, path)


def read_latest(store: str, arm: str) -> VersionInfo | None:
    """The arm's LATEST pointer, or None before its first publish. Raises AnnouncementRejected for a file
    that is not a VersionInfo of this arm; callers validate its fields as they do an announcement's."""
    path = latest_path(store, arm)
    if not path.exists():
        return None
    try:
        info = VersionInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError; a missing or extra key a TypeError
        raise AnnouncementRejected("undecodable", f"{path} is not a version record: {exc}") from None
    if not _plain_fields(info):
        raise AnnouncementRejected("undecodable", f"{path} has a field of the wrong type")
    if info.arm != arm:
        raise AnnouncementRejected("unknown_arm", f"{path} names arm {info.arm[:80]!r}, not {arm!r}")
    return info


def _plain_fields(info: VersionInfo) -> bool:
    """JSON can say `"version": "7"` or `true`, which a protobuf record cannot: each field's own type only."""
    numbers = (info.version, info.published_ms, info.trained_samples, info.items)
    texts = (info.arm, info.collection, info.tower_uri)
    return (all(type(n) is int for n in numbers)  # bool is an int subclass: `is`, not isinstance
            and all(isinstance(t, str) for t in texts))


def tower_versions(store: str, arm: str) -> list[int]:
    """Version numbers that have a tower file, announced or not: all taken."""
    return sorted(int(path.stem.split("-v")[1]) for path in (Path(store) / arm).glob("tower-v*.pt"))


def drop_towers_before(store: str, arm: str, keep_from: int) -> None:
    for version in tower_versions(store, arm):
        if version < keep_from:
            tower_path(store, arm, version).unlink(missing_ok=True)


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
    """What a server needs to rebuild the user tower of one version: the weights as CPU tensors and
    everything else as one JSON text, so the file is plain data by construction (json.dumps refuses any
    other object) and the header could move beside safetensors unchanged."""
    header = {"variant": variant, "model_config": asdict(model.cfg), "vocab": vocab.state_dict(),
              "info": asdict(info), "popular": list(popular)}
    return {
        "format": TOWER_FORMAT,
        "header": json.dumps(header),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_tower(store: str, arm: str, version: int) -> Tower:
    """The user tower of one version (inference mode), read from tower_path(store, arm, version) with torch's
    weights-only unpickler. Raises TowerFileError for a file that holds anything but tensors and plain data,
    is of another format, or is the tower of another arm or version (a file copied to the wrong name)."""
    from learner.batch import Vocabulary
    from learner.model import XDM

    path = tower_path(store, arm, version)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TowerFileError(f"{path} holds objects other than tensors and plain data, so it was not written by "
                             f"xdm's publish; it was not unpickled") from exc
    header = _header(payload, path)
    info = VersionInfo(**header["info"])
    if (info.arm, info.version) != (arm, version):
        raise TowerFileError(f"{path} holds version {info.version} of arm {info.arm!r}, not version {version} of {arm!r}")
    cfg = ModelConfig(**header["model_config"])
    vocab = Vocabulary(cfg.profile_field_names)
    vocab.load_state_dict(header["vocab"])
    model = XDM(cfg, vocab.sizes())
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Tower(model=model, vocab=vocab, info=info, popular=list(header["popular"]))


def _header(payload: Any, where: Path) -> dict[str, Any]:
    """The JSON header of a tower payload of the current format; TowerFileError naming `where` otherwise."""
    if not isinstance(payload, dict):
        raise TowerFileError(f"{where} is not a tower payload (a {type(payload).__name__})")
    if payload.get("format") != TOWER_FORMAT:
        raise TowerFileError(f"{where} is a tower of format {payload.get('format')!r}; this xdm reads format "
                             f"{TOWER_FORMAT} only. Publish the version again with this xdm")
    if not isinstance(payload.get("header"), str) or not isinstance(payload.get("state_dict"), dict):
        raise TowerFileError(f"{where} lacks a JSON header or a state_dict")
    try:
        header = json.loads(payload["header"])
    except ValueError as exc:
        raise TowerFileError(f"{where} has a header that is not JSON: {exc}") from None
    missing = {"variant", "model_config", "vocab", "info", "popular"} - set(header if isinstance(header, dict) else ())
    if missing:
        raise TowerFileError(f"{where} has a header without {', '.join(sorted(missing))}")
    if not all(isinstance(header[key], dict) for key in ("model_config", "vocab", "info")):
        raise TowerFileError(f"{where} has a header whose model_config, vocab or info is not a record")
    return header
