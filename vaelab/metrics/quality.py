"""A cheap sample-quality score for training: which epoch's weights to keep as the run's best.

FID between ``n`` samples and up to ``n`` validation images (the split every choice is made on; never the test images,
never the training images the model has fit) in the domain classifier's feature space (the classifier is trained once
per dataset into the cache, as ``vaelab evaluate`` does); for data without class labels, in the features of a fixed,
seeded, untrained network of the same shape (random-feature FID: cruder, but it ranks blur and collapse the same way).
A small folder has few validation images (a 500-image folder: 50); the samples stay ``n``, so only the reference side
of the FID is small.

The samples come from the sampler the user will get: a model with an encoder whose run fits a latent sampler
(``train.sampler``, the gmm by default) is scored with a cheap mixture refitted on its current codes
(``vaelab.samplers.proxy_mixture``: 20 components on up to 1,000 training images, 0.2-1 s), not with prior draws. On mnist5k both
keep the same epoch; on a ~500-image folder the prior score kept an epoch from the first fifth of the run, whose
prior draws were least bad, while the weights the user samples through a mixture kept improving (issue 34).

The latent draws come from the ``best_weights`` seed stream (chunk 0 for the per-epoch score; ``draw`` > 0 for the
fresh draws that confirm a choice), which ``vaelab evaluate``'s draws never share. The real features are computed
once; one call costs one sampling pass of ``n`` images and their features. The feature network runs channels-last, in
bf16 where the CPU has native bf16 (AMX / AVX-512 BF16): 3.2x faster features than fp32 for the same ranking (FID
within 0.1%; RESULTS.md, "Per-epoch work"). The score only ranks a run's epochs; ``vaelab evaluate`` measures in fp32.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from . import features as feats
from . import samples as sm


class SampleQuality:
    """score(model) -> FID of ``n`` samples against up to ``n`` fixed validation images (lower is better), or None when
    the validation split has too few images for a covariance (then no epoch can be chosen: the run keeps its last
    weights). ``sampler_proxy``: model -> a latent sampler fitted on its current codes (the trainer passes
    ``vaelab.samplers.proxy_mixture``), drawn from for a model with an encoder that carries no sampler of its own."""

    def __init__(self, data, data_cfg, n: int = 500, seed: int = 0, progress: bool = False, bf16: bool | None = None,
                 sampler_proxy=None, device: str | torch.device = "cpu", stream: str = "best_weights"):
        """``bf16``: the feature network in bf16 autocast (None: where the device runs bf16 natively). ``device``:
        where the classifier trains and the features are computed (the run's). ``stream``: the seed stream of the
        latent draws (``processes.SEED_STREAMS``; the sampler fit draws from its own)."""
        from ..accel import cpu_has_fast_bf16
        from ..data import spaced_images

        self.device = torch.device(device)
        self.seed, self.num_samples, self.stream = seed, n, stream
        if bf16 is None:
            bf16 = (torch.cuda.is_bf16_supported() if self.device.type == "cuda" else
                    cpu_has_fast_bf16() if self.device.type == "cpu" else False)
        self.bf16 = bf16
        self.sampler_proxy = sampler_proxy
        if data.train.labels is not None and data.num_classes >= 2:
            self.network = feats.load_classifier(feats.cached_classifier(data, data_cfg, progress, self.device))
            self.space = "classifier"
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.network = feats.DomainClassifier(data.channels, data.image_size, 2).eval()
            self.space = "random_features"
        self.network = self.network.to(self.device, memory_format=torch.channels_last)
        # validation images as the reference: choosing the epoch on the test images would bias the test numbers, and
        # on the training images it rewards copying them (a small folder's run picked an early epoch that way).
        # Spread over the split, whose order may follow the classes; a conditional model draws the reference's
        # classes (self.labels, cycled to n samples), so its samples are compared like with like
        self.n, self.real, self.labels = len(data.validation), None, None
        self.validation = data.validation
        if self.n >= 2:
            real, self.labels = spaced_images(data.validation, n)
            self.n, self.real = len(real), self.embed(real)
        self.settings = {"metric": "fid", "feature_space": self.space, "reference": "validation",
                         "reference_images": self.n, "samples": n, "seed": seed, "seed_stream": stream,
                         "features_bf16": self.bf16,
                         "sampler": getattr(sampler_proxy, "description", "the model's own (prior)")}

    def unseen_reference(self) -> "SampleQuality | None":
        """The same score against validation images its own reference does not hold (as many, spread over the rest),
        for a check of a choice made with this one; None where the split has fewer than twice as many."""
        import copy

        from ..data import spaced_indices

        total = len(self.validation)
        if self.real is None or total < 2 * self.n:
            return None
        chosen = set(spaced_indices(total, self.n).tolist())
        rest = torch.tensor([i for i in range(total) if i not in chosen])
        other = copy.copy(self)
        part = self.validation.select(rest[spaced_indices(len(rest), self.n)])
        real = part.take(torch.arange(len(part))).float() / 255.0
        other.real, other.labels = other.embed(real), part.labels
        other.settings = {**self.settings, "reference": "validation images the choice was not made on"}
        return other

    @torch.inference_mode()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features (n, F) float64 on the CPU of images x float (n, C, H, W) in [0, 1], in the score's space."""
        chunks = []
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext():
            for i in range(0, len(x), 500):
                batch = x[i : i + 500].float().to(self.device).contiguous(memory_format=torch.channels_last)
                chunks.append(self.network(batch)[0].float().cpu())
        return torch.cat(chunks).double()

    @torch.no_grad()
    def score(self, model, draw: int = 0, keep: list | None = None) -> float | None:
        """FID of the model's samples; ``draw`` picks the latent draws (0: the per-epoch score's). ``keep``: a list
        ``{"images": float (n, C, H, W) on the CPU, "features": (n, F)}`` is appended to, for a caller that measures
        the samples further."""
        from ..processes import stream_seed
        from ..progress import Phase
        from ..work_size import is_costly

        if self.real is None:
            return None
        was_training, own_sampler = model.training, getattr(model, "latent_sampler", None)
        model.eval()
        try:
            if self.sampler_proxy is not None and model.has_encoder and own_sampler is None:
                with torch.random.fork_rng(devices=[]):
                    model.latent_sampler = self.sampler_proxy(model)
            y = None
            if model.is_conditional and self.labels is not None:
                y = self.labels[torch.arange(self.num_samples) % len(self.labels)].to(model.device)
            draws = torch.Generator().manual_seed(stream_seed(self.stream, self.seed, draw))
            # a line where drawing them takes a while (a 128 px generator on a CPU: minutes), none each epoch else
            with Phase(f"drawing {self.num_samples} samples to score", self.num_samples, bar=False) \
                    if is_costly(model) else nullcontext() as phase:
                fake = model.sample(self.num_samples, y=y, generator=draws).float()
                if phase is not None:
                    phase.advance(len(fake))
        finally:
            model.latent_sampler = own_sampler
            model.train(was_training)
        features = self.embed(fake)
        if keep is not None:
            keep.append({"images": fake.cpu(), "features": features})
        return sm.fid(self.real, features)
