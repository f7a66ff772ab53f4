"""The update context a model's ``training_step(batch, ctx)`` is given: how a model orders its own updates.

A model computes its losses from one forward pass and hands them over: ``ctx.update(loss, "name")`` for one
optimizer, ``ctx.update_many({"encoder": l1, "decoder": l2, ...})`` for several losses of one graph (every gradient
is taken first, then the optimizer steps run in the dict's order), and ``ctx.mean_over_processes(values)`` for any
value a decision about the updates depends on (a skipped discriminator step, a k_t controller), so that every
process takes the same decision. The context takes the gradients, averages them across processes, checks that every
loss is finite on every process, clips and steps. VAE: one ``update``; VAE-GAN: three losses in one
``update_many``; WGAN-GP: n_critic critic updates, then a generator update; AVAE: three losses and the controller.
"""

from __future__ import annotations

import torch

from ..errors import TrainingDiverged


class UpdateContext:
    """Gradients, their average across processes, clipping and optimizer steps for ``training_step``.

    Each optimizer's gradient is taken with ``torch.autograd.grad`` over its own parameters only, so a loss
    never leaves gradients in another network, and several losses of one forward pass can be applied in turn.
    The gradients are given their parameter's strides, as ``backward()`` would: autograd.grad returns them as the
    ops made them (transposed by a double backward, channels-last from a channels-last conv), and torch 2.14's
    fused CPU Adam silently pairs the wrong elements when the layouts differ (CUDA's raises instead).
    ``step``: the optimizer steps done before this one (the trainer sets it).
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], scalers: dict, world: int,
                 grad_clip: float | None, device_type: str):
        self.optimizers, self.scalers = optimizers, scalers
        self.world, self.grad_clip, self.device_type = world, grad_clip, device_type
        self.step = 0

    def update(self, loss: torch.Tensor, optimizer: str, terms: dict[str, torch.Tensor] | None = None) -> None:
        """Gradient of ``loss`` for optimizer ``optimizer``'s parameters, averaged across processes, then its step.
        ``terms``: the named loss terms, to say which one was not finite if the loss is not."""
        self.update_many({optimizer: loss}, terms)

    def mean_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``values`` over all processes (a detached float32 copy): what a model bases a
        decision on that changes which updates run (a skipped step, a controller's value), so every process takes
        the same one."""
        values = values.detach().float().clone()
        if self.world > 1:
            torch.distributed.all_reduce(values)
            values /= self.world
        return values

    def update_many(self, losses: dict[str, torch.Tensor], terms: dict[str, torch.Tensor] | None = None) -> None:
        """Gradients of every ``{optimizer: loss}`` from the current graph first, then the steps in dict order."""
        self._check_finite(losses, terms)
        names = list(losses)
        pending = []
        for i, name in enumerate(names):
            opt = self.optimizers[name]
            params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
            scaler = self.scalers.get(name)
            loss = scaler.scale(losses[name]) if scaler else losses[name]
            with torch.autocast(self.device_type, enabled=False):
                grads = torch.autograd.grad(loss, params, retain_graph=i + 1 < len(names), allow_unused=True)
            pending.append((name, params, grads))
        for name, params, grads in pending:
            for p, g in zip(params, grads):
                p.grad = g if g is None or g.stride() == p.stride() else g.new_empty_strided(p.shape, p.stride()).copy_(g)
            self._average_gradients([p.grad for p in params if p.grad is not None])
            self._step(name, params)

    def _check_finite(self, losses: dict[str, torch.Tensor], terms: dict[str, torch.Tensor] | None) -> None:
        # One flag per loss, agreed across processes (MIN), read with one sync: every process stops together,
        # never one raising while the others wait in the gradient all-reduce.
        finite = torch.stack([torch.isfinite(loss.detach()).all() for loss in losses.values()]).float()
        if self.world > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if bool(finite.all()):
            return
        name, loss = next((n, l) for (n, l), ok in zip(losses.items(), finite.tolist()) if not ok)
        if bool(torch.isfinite(loss.detach())):
            raise TrainingDiverged(f"the loss of optimizer '{name}' became non-finite on another process "
                                   f"at step {self.step + 1}")
        bad = {k: float(v.detach()) for k, v in (terms or {}).items() if not bool(torch.isfinite(v.detach()))}
        term = next(iter(bad), "loss")
        value = bad.get(term, float(loss.detach()))
        raise TrainingDiverged(f"loss term '{term}' (optimizer '{name}') became {value} at step {self.step + 1}")

    def _average_gradients(self, grads: list[torch.Tensor]) -> None:
        if self.world == 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _step(self, name: str, params: list[torch.nn.Parameter]) -> None:
        opt, scaler = self.optimizers[name], self.scalers.get(name)
        if scaler:
            scaler.unscale_(opt)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
