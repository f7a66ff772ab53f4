"""Channels-last memory layout for a whole model, decided once in ``use_channels_last``.

oneDNN's and cuDNN's convolutions skip a layout copy per call when weights and maps are NHWC. Two places where a
model changes between a map and a vector would hand the next layer the other layout, and a mixed-layout kernel is
slower: ``nn.Flatten``'s backward returns an NCHW gradient to a channels-last map (its elementwise backward then
mixes layouts), and ``nn.Unflatten`` of a linear layer's output gives an NCHW map to channels-last convs. The
model's own ``nn.Flatten`` / ``nn.Unflatten`` modules are swapped for the layout-keeping ones below; parameters,
names and checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is laid out channels-last and not also contiguous NCHW (as when C or H * W is 1)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class _FlattenChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


class ChannelsLastFlatten(nn.Flatten):
    """``nn.Flatten()``: (B, C, H, W) -> (B, C * H * W) in NCHW order; a channels-last input gets its gradient back
    channels-last."""

    def forward(self, x):
        if x.dim() == 4 and x.requires_grad and is_channels_last(x):
            return _FlattenChannelsLast.apply(x)
        return super().forward(x)


class ChannelsLastUnflatten(nn.Unflatten):
    """``nn.Unflatten(1, (C, H, W))``: (B, C * H * W) -> (B, C, H, W), laid out channels-last."""

    def forward(self, x):
        out = super().forward(x)
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


def use_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model`` (in place) to channels-last weights, with layout-keeping flatten/unflatten modules."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            module.__class__ = ChannelsLastFlatten
        elif type(module) is nn.Unflatten and module.dim == 1:
            module.__class__ = ChannelsLastUnflatten
    return model
