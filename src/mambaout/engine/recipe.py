"""What every task's recipe shares: the global batch and a plain-dict form for checkpoints.
A task's recipe is a dataclass deriving from RecipeData, in its own tasks/<task>/recipe.py."""
from __future__ import annotations

from dataclasses import asdict, fields


class RecipeData:
    """What every task recipe shares: its global batch, and a plain-dict form for checkpoints."""

    def global_batch(self, world_size: int = 1) -> int:
        return world_size * self.batch_size * self.grad_accum_steps

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        """From to_dict's form; unknown keys (a newer or older checkpoint) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})
