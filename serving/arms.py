"""A/B arms: parse `name[=model]:share,...` and assign users stickily by a hash of their id.

An arm is served by the learner (model) of the same name unless `=model` names another arm's learner:
`xdm:50,twin=xdm:50` is an A/A test whose two arms share one model, so any difference between them is
chance alone (what tests the statistics).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


class ArmError(ValueError):
    """An arms specification or a requested arm is invalid."""


@dataclass(frozen=True)
class Arms:
    names: tuple[str, ...]
    shares: tuple[float, ...]  # normalised to sum to 1
    models: tuple[str, ...] = ()  # the learner behind each arm (its own name unless aliased)

    def model_for(self, arm: str) -> str:
        return self.models[self.names.index(arm)] if self.models else arm

    @property
    def learners(self) -> tuple[str, ...]:
        """Distinct learners the arms need, in order of first use."""
        return tuple(dict.fromkeys(self.models or self.names))

    @classmethod
    def parse(cls, spec: str) -> "Arms":
        names, weights, models = [], [], []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, sep, share = part.partition(":")
            name, _, model = (x.strip() for x in name.partition("="))
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
            models.append(model or name)
        if not names:
            raise ArmError("no arms configured; set serving.arms like 'xdm:50,sdm:50'")
        total = sum(weights)
        return cls(tuple(names), tuple(w / total for w in weights), tuple(models))

    def assign(self, user_id: str) -> str:
        """Sticky: the same user always lands in the same arm for the same shares."""
        point = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big") / 2**64
        cumulative = 0.0
        for name, share in zip(self.names, self.shares):
            cumulative += share
            if point < cumulative:
                return name
        return self.names[-1]
