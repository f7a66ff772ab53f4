"""An exponential moving average of the trained weights (Polyak averaging), the weights GAN work samples from.

Adversarial training does not converge to a point: the generator circles around one, and the samples of any single
step carry that step's oscillation. Averaging the weights over the last ~1 / (1 - decay) steps cancels it (Yazici et
al. 2019, "The Unusual Effectiveness of Averaging in GAN Training"; Karras et al. 2018 sample their progressive GANs
from such an average). With ``train.ema_decay`` set, the run samples, scores, evaluates and saves the average; the
optimizers keep training the raw weights, which the checkpoints hold beside it.

Not ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: averaging buffers there lerps BatchNorm's
integer ``num_batches_tracked`` too (an error), and it has no warm-up, so a short run's average would still hold the
random initial weights.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (1, 2, ...): min(decay, (1 + t) / (10 + t)), the warm-up of
    TensorFlow's ExponentialMovingAverage, so the average forgets the initial weights within the first ~100 steps."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """``average``: a model of the trained one's architecture, set to its weights, then moved after every optimizer
    step by ``update(model)``: avg <- avg + (1 - d_t) (w - avg) for every floating parameter and buffer (BatchNorm's
    running statistics follow the weights they belong to); integer buffers are copied."""

    def __init__(self, average: nn.Module, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the decay must lie strictly between 0 and 1, got {decay}")
        self.model, self.decay, self.updates = average, decay, 0
        self.model.load_state_dict(model.state_dict())
        self.model.requires_grad_(False)
        self.model.eval()

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - ema_decay_at(self.decay, self.updates)
        averaged, current = [], []
        for avg, now in zip(self._tensors(self.model), self._tensors(model), strict=True):
            if avg.is_floating_point():
                averaged.append(avg)
                current.append(now.detach())
            else:
                avg.copy_(now)
        torch._foreach_lerp_(averaged, current, weight)

    def state_dict(self) -> dict:
        return {"weights": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
