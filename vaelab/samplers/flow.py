"""A normalizing flow on the training codes: a masked autoregressive flow (Papamakarios et al. 2017, "Masked
Autoregressive Flow for Density Estimation", NeurIPS; zuko's ``MAF``: five affine autoregressive transforms, MADE
networks of two hidden layers of 256, alternating orders), fitted by maximum likelihood on the standardised codes,
conditioned on the one-hot class where the data have labels.

An exact density, so it follows curved and multi-modal code sets that a mixture needs many components for. Sampling
inverts the autoregressive transforms (D passes each): under a second for a thousand codes of these sizes.
Measured against zuko's neural spline flow (VAE-GAN codes, 32-D, per class, the same fit): NSF with
autoregressive splines costs 1.5 s an optimizer step on 2 cores against MAF's 0.03 s, and NSF with coupling
splines reached a worse validation NLL in the same time (31.5 nats against MAF's 29.1).
"""

from __future__ import annotations

from .neural import NetworkSampler, fit_network

TRANSFORMS = 5
HIDDEN = (256, 256)


class FlowSampler(NetworkSampler):
    kind = "flow"

    @classmethod
    def build_net(cls, settings):
        import zuko

        return zuko.flows.MAF(settings["features"], context=settings["classes"], transforms=settings["transforms"],
                              hidden_features=tuple(settings["hidden"]))

    def decode(self, eps, context):
        return self.net(context).transform.inv(eps)


def negative_log_likelihood(net, x, context):
    return -net(context).log_prob(x).mean()


def fit_flow(codes, labels=None, class_names=None, val_codes=None, val_labels=None, seed=0,
             transforms: int = TRANSFORMS, hidden=HIDDEN, **fit_options) -> FlowSampler:
    """A flow fitted on codes (N, D), per class with labels (N,); the epoch kept on the validation codes' NLL."""
    settings = {"transforms": transforms, "hidden": list(hidden), "model": "zuko.flows.MAF"}
    return fit_network(FlowSampler, negative_log_likelihood, codes, labels, class_names, val_codes, val_labels,
                       settings, seed=seed, **fit_options)
