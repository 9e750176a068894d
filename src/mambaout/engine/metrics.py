"""Top-1 / top-5 accuracy and mean loss over an evaluation, every sample counted once across
processes: what image classification and video classification report alike."""
from __future__ import annotations

import torch

from ..distributed import Dist, all_reduce_sum
from ..errors import MambaOutError


class TopKAccuracy:
    """Sums of loss, top-1 and top-5 hits, samples and skipped samples, reduced once at the end."""

    def __init__(self):
        self.sums = torch.zeros(5, dtype=torch.float64)   # loss, top1, top5, count, skipped

    def skip(self, n: int) -> None:
        self.sums[4] += n

    def add(self, scores: torch.Tensor, targets: torch.Tensor, loss_sum: float) -> None:
        """One batch: scores [B, classes] (logits or probabilities), its summed loss."""
        top = scores.topk(min(5, scores.shape[1]), dim=1).indices
        hit = top == targets[:, None]
        self.sums[0] += loss_sum
        self.sums[1] += hit[:, 0].sum().item()
        self.sums[2] += hit.any(dim=1).sum().item()
        self.sums[3] += len(targets)

    def result(self, d: Dist, samples: str = "images") -> dict:
        """{"top1", "top5" (percent), "loss" (mean), samples: count, "skipped"} over every process."""
        sums = all_reduce_sum(self.sums.to(d.device), d).cpu()
        n = int(sums[3])
        if n == 0:
            raise MambaOutError(f"no readable {samples} to evaluate")
        return {"top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n,
                "loss": sums[0].item() / n, samples: n, "skipped": int(sums[4])}
