"""A/B arms: parse `name:share,...` and assign users stickily by a hash of their id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


class ArmError(ValueError):
    """An arms specification or a requested arm is invalid."""


@dataclass(frozen=True)
class Arms:
    names: tuple[str, ...]
    shares: tuple[float, ...]  # normalised to sum to 1

    @classmethod
    def parse(cls, spec: str) -> "Arms":
        names, weights = [], []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, sep, share = part.partition(":")
            name = name.strip()
            if not name or (sep and not share.strip()):
                raise ArmError(f"arm entry {part!r} must look like name:share")
            try:
                weight = float(share) if sep else 1.0
            except ValueError:
                raise ArmError(f"arm {name!r} has share {share!r}, not a number") from None
            if weight <= 0 or name in names:
                raise ArmError(f"arm {name!r} must appear once with a positive share")
            names.append(name)
            weights.append(weight)
        if not names:
            raise ArmError("no arms configured; set serving.arms like 'xdm:50,sdm:50'")
        total = sum(weights)
        return cls(tuple(names), tuple(w / total for w in weights))

    def assign(self, user_id: str) -> str:
        """Sticky: the same user always lands in the same arm for the same shares."""
        point = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big") / 2**64
        cumulative = 0.0
        for name, share in zip(self.names, self.shares):
            cumulative += share
            if point < cumulative:
                return name
        return self.names[-1]
