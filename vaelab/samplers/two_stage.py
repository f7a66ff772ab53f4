"""The two-stage VAE's second stage (Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models", ICLR, section 4): a
second VAE fitted on the first one's codes z, whose own latent u does fill N(0, I), with a learned decoder variance
gamma so that it can match the codes' density closely (their Theorem 2 and the argument around it).

    encoder  z -> (mu_u, log sigma_u);  decoder  u -> z_hat;  gamma a learned scalar (its log is a parameter)
    loss = sum_d [ (z_d - z_hat_d)^2 / (2 gamma^2) + log gamma ]  +  KL(N(mu_u, sigma_u^2) || N(0, I))   (eq. 2's
           Gaussian decoder with the learned gamma, as in the authors' code: gamma a standard deviation)
    sampling: u ~ N(0, I), z = z_hat(u)  (the decoder's mean)

The authors' networks: three hidden layers of 1,024 units each side, the input concatenated to the last hidden
layer. Changed here: 512 units (a fit within a minute on 2 CPU cores), Adam 1e-3 with the epoch kept on the
validation codes' loss instead of their fixed long schedule. With labels, the one-hot class is a further input of
both sides (a conditional second stage), so ``--label k`` draws class k.
"""

from __future__ import annotations

import torch
from torch import nn

from .neural import NetworkSampler, fit_network

DEPTH = 3
WIDTH = 512


class SecondStageVAE(nn.Module):
    def __init__(self, features: int, classes: int, width: int, depth: int):
        super().__init__()

        def mlp(inputs):
            layers, size = [], inputs
            for _ in range(depth):
                layers += [nn.Linear(size, width), nn.ReLU()]
                size = width
            return nn.Sequential(*layers)

        self.encoder = mlp(features + classes)
        self.posterior = nn.Linear(width + features + classes, 2 * features)
        self.decoder = mlp(features + classes)
        self.mean = nn.Linear(width + features + classes, features)
        self.log_gamma = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _with(x, context):
        return x if context is None else torch.cat([x, context], 1)

    def decode(self, u, context=None):
        """u (n, D) -> z_hat (n, D)."""
        inputs = self._with(u, context)
        return self.mean(torch.cat([self.decoder(inputs), inputs], 1))

    def loss(self, z, context=None):
        """The negative ELBO per code (the module docstring's loss), averaged over the batch z (n, D)."""
        inputs = self._with(z, context)
        mu, log_sigma = self.posterior(torch.cat([self.encoder(inputs), inputs], 1)).chunk(2, dim=1)
        u = mu + log_sigma.exp() * torch.randn_like(mu)
        z_hat = self.decode(u, context)
        nll = ((z - z_hat) ** 2 / (2 * torch.exp(2 * self.log_gamma)) + self.log_gamma).sum(1)
        kl = 0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(1)
        return (nll + kl).mean()


class TwoStageSampler(NetworkSampler):
    kind = "two-stage"

    @classmethod
    def build_net(cls, settings):
        return SecondStageVAE(settings["features"], settings["classes"], settings["width"], settings["depth"])

    def decode(self, eps, context):
        return self.net.decode(eps, context)


def fit_two_stage(codes, labels=None, class_names=None, val_codes=None, val_labels=None, seed=0,
                  width: int = WIDTH, depth: int = DEPTH, **fit_options) -> TwoStageSampler:
    """A second-stage VAE fitted on codes (N, D), conditional on labels (N,) where given; the epoch kept on the
    validation codes' loss."""
    settings = {"width": width, "depth": depth, "model": "Dai & Wipf 2019 second stage"}
    return fit_network(TwoStageSampler, lambda net, x, c: net.loss(x, c), codes, labels, class_names, val_codes,
                       val_labels, settings, seed=seed, **fit_options)
