"""A setting's value read from text: config overrides, `xdm tune --values` and `xdm simulate --world` share it.

Kept apart from `xdm.config` so that the simulator can read its settings without importing the model.
"""

from __future__ import annotations

from typing import Any


def parse_setting(text: str, kind: type) -> Any:
    """`text` read as a setting of type `kind` (int, float, bool, str), the one way config overrides, `xdm tune`
    values and `xdm simulate --world` read theirs; ValueError when it is not one."""
    if kind is bool:
        return _parse_bool(text)
    return kind(text)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)
