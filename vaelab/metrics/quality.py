"""A cheap sample-quality score for training: which epoch's weights to keep as the run's best.

FID between ``n`` samples and the first ``n`` training images in the domain classifier's feature space (the classifier
is trained once per dataset into the cache, as ``vaelab evaluate`` does); for data without class labels, in the
features of a fixed, seeded, untrained network of the same shape (random-feature FID: cruder, but it ranks blur and
collapse the same way). The real features are computed once; one call costs one sampling pass of ``n`` images and
their features (0.4-1.3 s for 500 digits on 2 CPU cores, RESULTS.md).
"""

from __future__ import annotations

import torch

from . import features as feats
from . import samples as sm


class SampleQuality:
    """score(model) -> FID of ``n`` samples against ``n`` fixed training images (lower is better), or None when
    the training split has too few images for a covariance."""

    def __init__(self, data, data_cfg, n: int = 500, seed: int = 0, progress: bool = False):
        from ..data import spaced_images

        self.seed = seed
        if data.train.labels is not None and data.num_classes >= 2:
            self.network = feats.load_classifier(feats.cached_classifier(data, data_cfg, progress))
            self.space = "classifier"
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.network = feats.DomainClassifier(data.channels, data.image_size, 2).eval()
            self.space = "random_features"
        # training images as the reference (choosing the best epoch on the test images would bias the test numbers),
        # spread over the split: mnist5k's first 500 training images are 400 zeros and 100 ones
        # a conditional model draws the reference's classes (self.labels), so its samples are compared like with like
        real, self.labels = spaced_images(data.train, n)
        self.n = len(real)
        self.real = self._features(real) if self.n >= 2 else None
        self.settings = {"metric": "fid", "feature_space": self.space, "samples": self.n, "seed": seed}

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.network(x[i : i + 500].float().cpu())[0] for i in range(0, len(x), 500)]).double()

    @torch.no_grad()
    def score(self, model) -> float | None:
        if self.real is None:
            return None
        was_training = model.training
        model.eval()
        try:
            y = self.labels.to(model.device) if model.is_conditional and self.labels is not None else None
            fake = model.sample(self.n, y=y, generator=torch.Generator().manual_seed(self.seed)).float()
        finally:
            model.train(was_training)
        return sm.fid(self.real, self._features(fake))
