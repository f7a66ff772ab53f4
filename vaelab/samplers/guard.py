"""The sampler fit's copy guard: whether a candidate's samples sit on the training images it was fitted on.

A density fitted on training codes can draw the training images back (many small components on a few hundred
codes do), and a copying sampler scores well on FID. The guard measures a candidate's samples against every training
image the fit encoded (chunked nearest neighbours, in pixels and in the score's feature space) with two statistics
(``metrics.samples.memorisation``), each beside a reference of unseen images: the validation images themselves, and
the model's reconstructions of them (unseen images with the model's own blur: in pixels a blurred image sits closer
to every image, so a blurry model's honest samples read below the first reference without copying anything).

- the median ratio: the samples' median distance to their nearest training image over the reference's (``ratio``,
  ``ratio_to_reconstructions``, in pixels). A sampler that copies most of its draws reads far below 1.
- the copy share: the share of samples nearer to a training image than the closest 1% of the reference images are
  (``copy_share`` against the reconstructions in pixels, ``copy_share_features`` against the validation images in
  features). A median passes with up to half the draws exact copies; this catches a minority: unseen images give
  about 1%, a sampler that copies a tenth of its draws about 11%.

A candidate is refused (``refusal``) when both median ratios sit below ``MEMORISATION_FLOOR``, or either copy share
exceeds ``COPY_SHARE_LIMIT``, or nothing could be measured (no validation images): a refused candidate is never a
run's default, and a fit whose candidates are all refused falls back to the prior (``vaelab.samplers.fit``).
Among the rest, ``level`` ranks those as far from the training images as the validation images themselves first:
on a small folder the decoder has learned its few hundred training images, its reconstructions of unseen images lean
towards them, and the second reference alone lets near-copies through (VAE-GAN on 350 digits: 50 components read
0.94 against the reconstructions and 0.82 against the validation digits; RESULTS.md).
"""

from __future__ import annotations

import torch

from ..metrics import samples as sm

MEMORISATION_FLOOR = 0.9
# Above this share of samples closer than that threshold, a candidate is refused. Honest candidates measured on
# mnist5k read 0.2-3.6% (RESULTS.md "The copy guard"); 0.06 is well above their spread and catches a sampler that
# copies a twentieth of its draws or more.
COPY_SHARE_LIMIT = 0.06
GUARD_SAMPLES = 500  # draws the guard measures (at least; as many as the validation images where more)
REFERENCE_IMAGES = 500  # validation images the references take (spread over the split)


class CopyGuard:
    """References measured once per fit: the validation images, the model's reconstructions of them and their
    nearest-neighbour distances to the training images ``rows`` of ``train`` (the images the fit encoded), in pixels
    and, with ``features`` (float (n, C, H, W) -> (n, F)), in features; ``measure(samples, sample_features)`` then
    gives one candidate's statistics. ``usable`` is False without at least 2 validation images."""

    def __init__(self, model, train, rows: torch.Tensor, validation, features=None, progress: bool = False):
        from ..data import image_chunks, spaced_images
        from ..progress import Phase
        from ..sampling import reconstruct_all

        self.train, self.rows, self.features = train, rows, features
        self.usable = len(validation) >= 2
        self.settings = {"training_images": len(rows), "reference_images": 0, "copy_percentile": sm.COPY_PERCENTILE,
                         "copy_share_limit": COPY_SHARE_LIMIT, "median_floor": MEMORISATION_FLOOR,
                         "spaces": ["pixels"] + (["features"] if features is not None else [])}
        if not self.usable:
            return
        x_val, y_val = spaced_images(validation, REFERENCE_IMAGES)
        self.settings["reference_images"] = len(x_val)
        x_rec = reconstruct_all(model, x_val, y_val, across_processes=False)  # the main process alone
        distances = sm.nearest_neighbour_distances(torch.cat([x_val, x_rec]), self._pixels)  # one pass for both
        self.reference_pixels = dict(zip(("validation", "reconstructions"), distances.split(len(x_val))))
        self.train_features = None
        if features is not None:  # one pass over the training images: their features, kept (N, F)
            with Phase("measuring the training images' features for the copy guard", total=len(rows),
                       bar=progress) as phase:
                parts = []
                for xb, _ in image_chunks(train.select(rows), chunk=500):
                    parts.append(features(xb).float())
                    phase.advance(len(xb))
            self.train_features = torch.cat(parts)
            self.reference_features = sm.nearest_neighbour_distances(features(x_val).float(), self.train_features)

    def _pixels(self):
        """The training images the fit encoded, as float chunks (read from the split a piece at a time)."""
        from ..data import image_chunks

        for xb, _ in image_chunks(self.train.select(self.rows), chunk=sm.CHUNK):
            yield xb

    def measure(self, samples: torch.Tensor, sample_features: torch.Tensor | None = None) -> dict:
        """The guard's statistics of samples (n, C, H, W) (and their features (n, F)): median ratios against both
        references and copy shares (see the module docstring)."""
        own = sm.nearest_neighbour_distances(samples.float(), self._pixels)
        val, rec = self.reference_pixels["validation"], self.reference_pixels["reconstructions"]
        row = {"memorisation_ratio_pixels": _ratio(own, val), "memorisation_ratio": _ratio(own, rec),
               "copy_share": sm.copy_share(own, rec), "copy_share_validation": sm.copy_share(own, val)}
        if self.train_features is not None and sample_features is not None:
            theirs = sm.nearest_neighbour_distances(sample_features.float(), self.train_features)
            row["memorisation_ratio_features"] = _ratio(theirs, self.reference_features)
            row["copy_share_features"] = sm.copy_share(theirs, self.reference_features)
        return row


def _ratio(samples: torch.Tensor, reference: torch.Tensor) -> float:
    own = float(reference.median())
    return float(samples.median()) / own if own > 0 else float("nan")


def refusal(row: dict | None) -> str | None:
    """Why the guard refuses a candidate's row, or None when it passes. A statistic that was not measured fails."""
    if row is None or "memorisation_ratio" not in row:
        return "not measured (no validation images to compare its samples with)"
    reasons = []
    ratios = (row["memorisation_ratio_pixels"], row["memorisation_ratio"])
    if not any(r >= MEMORISATION_FLOOR for r in ratios):  # NaN compares False: fails
        reasons.append(f"its samples' median distance to the training images is {ratios[0]:.2f} times the validation "
                       f"images' and {ratios[1]:.2f} times their reconstructions' (floor {MEMORISATION_FLOOR})")
    for key, where in (("copy_share", "in pixels"), ("copy_share_features", "in features")):
        if key in row and not row[key] <= COPY_SHARE_LIMIT:
            reasons.append(f"{row[key]:.1%} of its samples sit nearer to a training image than the closest "
                           f"{sm.COPY_PERCENTILE:.0%} of unseen images {where} (limit {COPY_SHARE_LIMIT:.0%})")
    return "; ".join(reasons) or None


def level(row: dict | None) -> int:
    """Among passing candidates, 2: as far from the training images as the validation images and as their
    reconstructions; 1: as their reconstructions only. 0: refused."""
    if refusal(row) is not None:
        return 0
    return 1 + (row["memorisation_ratio_pixels"] >= MEMORISATION_FLOOR and row["memorisation_ratio"] >= MEMORISATION_FLOOR)
