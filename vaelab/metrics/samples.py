"""Sample-side metrics: FID, KID, IS (torchmetrics), MMD, MS-SSIM diversity, precision/recall, class coverage,
sharpness. Features are extracted once by the caller; FID/KID/IS receive them through an identity module, so
torchmetrics does the statistics without a second pass of the network. The feature sets are complete (gathered
from every process by ``evaluate.embed``), so torchmetrics' own cross-process sync is off (``sync_on_compute``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import unbiased_mmd2

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# torchmetrics warns that KID and IS keep their features in memory; ours are in memory already.
warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")


class _Given(nn.Module):
    """Identity 'feature extractor': the metric is updated with features computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def fid(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to the two feature sets (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Given(real_features.shape[1]), normalize=True, sync_on_compute=False)
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.double(), real=False)
    return float(metric.compute())


def kid(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> dict:
    """Kernel Inception Distance (cubic polynomial kernel MMD^2, unbiased), mean and std over random subsets."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real_features), len(fake_features))
    metric = KernelInceptionDistance(feature=_Given(real_features.shape[1]), subsets=subsets, subset_size=size,
                                      sync_on_compute=False)
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"kid": float(mean), "kid_std": float(std), "kid_subsets": subsets, "kid_subset_size": size}


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> dict:
    """exp(E_x KL(p(y|x) || p(y))) from classifier logits, mean and std over splits (torchmetrics)."""
    from torchmetrics.image.inception import InceptionScore

    metric = InceptionScore(feature=_Given(logits.shape[1]), splits=splits, sync_on_compute=False)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"is": float(mean), "is_std": float(std), "is_splits": splits}


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> dict:
    """Unbiased MMD^2 with a Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 s^2)) (Gretton et al. 2012, eq. 3).

    ``x`` (N, d) is the real set, ``y`` (M, d) the samples. s defaults to the median heuristic over the real set
    alone (the median pairwise distance between real points), so every model compared against the same real set
    is measured with the same kernel; a bandwidth taken from the pooled sets would differ from run to run.
    """
    x, y = x.double().flatten(1), y.double().flatten(1)
    pooled = torch.cat([x, y])
    d2 = torch.cdist(pooled, pooled).pow(2)
    if bandwidth is None:
        n = len(x)
        off_diag = d2[:n, :n][~torch.eye(n, dtype=torch.bool)]
        bandwidth = float(off_diag.sqrt().median())
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n = len(x)
    value = unbiased_mmd2(k[:n, :n], k[n:, n:], k[:n, n:])
    return {"mmd2": float(value), "bandwidth": bandwidth, "bandwidth_rule": "median pairwise distance of the real set"}


def ms_ssim_settings(image_size: int) -> tuple[int, int]:
    """(scales, window) for MS-SSIM at this size: the most scales (<= 5) that allow an odd window >= 5 (else 3).

    torchmetrics needs size >= 2^scales and size // (scales - 1)^2 > window - 1: five scales with an 11-px window
    need about 161 px; 28 px digits get three scales with a 7-px window.
    """
    for min_window in (5, 3):
        for scales in range(5, 0, -1):
            if image_size < 2**scales:
                continue
            limit = image_size // max(1, scales - 1) ** 2
            window = min(11, limit if limit % 2 else limit - 1)
            if window >= min_window:
                return scales, window
    raise ValueError(f"images of {image_size} px are too small for MS-SSIM")


def ms_ssim_diversity(images: torch.Tensor, pairs: int = 1000, seed: int = 0) -> dict:
    """Mean MS-SSIM over random pairs of distinct images (lower = more diverse). images: (N, C, H, W) in [0, 1]."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    scales, window = ms_ssim_settings(min(images.shape[-2:]))
    betas = torch.tensor(MS_SSIM_BETAS[:scales])
    betas = tuple((betas / betas.sum()).tolist())
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(len(images), (pairs,), generator=gen)
    b = (a + torch.randint(1, len(images), (pairs,), generator=gen)) % len(images)
    values = []
    for i in range(0, pairs, 500):
        values.append(ms_ssim(images[a[i : i + 500]].float(), images[b[i : i + 500]].float(), kernel_size=window,
                              betas=betas, data_range=1.0, reduction="none"))
    return {"ms_ssim": float(torch.cat(values).mean()), "ms_ssim_pairs": pairs, "ms_ssim_scales": scales,
            "ms_ssim_window": window}


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls in feature space, and density and
    coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models", eqs. 3-4).

    real (N, D), fake (M, D) features. precision: the share of fake samples inside some real sample's k-NN ball
    (low = blur / off-manifold samples); recall: the share of real samples inside some fake sample's k-NN ball (low =
    mode collapse). Recall draws its balls around the fakes, so a few scattered off-manifold samples, with wide
    balls, cover many real images and raise it (Naeem et al. sec. 3); coverage draws them around the real samples
    instead: the share of real samples with at least one fake inside their own k-NN ball. density: the mean number
    of real balls holding a fake, over k (1 when fakes sit where the real images do; above 1 where they crowd).
    """
    real, fake = real.double(), fake.double()
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    fake_in_any, real_covered = torch.zeros(len(fake), dtype=torch.bool), torch.zeros(len(real), dtype=torch.bool)
    real_in_any, inside_count = torch.zeros(len(real), dtype=torch.bool), 0.0
    for start in range(0, len(fake), CHUNK):  # (chunk, N) at a time: never the whole (M, N) matrix
        inside = torch.cdist(fake[start : start + CHUNK], real) <= real_radii[None]  # fake i in real j's ball
        fake_in_any[start : start + CHUNK] = inside.any(1)
        real_covered |= inside.any(0)
        inside_count += float(inside.sum())
    for start in range(0, len(real), CHUNK):
        real_in_any[start : start + CHUNK] = (torch.cdist(real[start : start + CHUNK], fake) <= fake_radii[None]).any(1)
    return {"precision": float(fake_in_any.double().mean()), "recall": float(real_in_any.double().mean()),
            "density": inside_count / (k * len(fake)), "coverage": float(real_covered.double().mean()), "pr_k": k}


CHUNK = 1000  # rows of a pairwise-distance computation held at once


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point of the set (N,), a chunk of rows at a time."""
    return torch.cat([torch.cdist(feats[i : i + CHUNK], feats).kthvalue(k + 1, dim=1).values  # +1: itself first
                      for i in range(0, len(feats), CHUNK)])


def class_coverage(logits: torch.Tensor, num_classes: int, min_share: float | None = None) -> dict:
    """Which classes the classifier sees in the samples: histogram, classes present (>= min_share), entropy."""
    preds = logits.argmax(1)
    hist = torch.bincount(preds, minlength=num_classes).double()
    share = hist / hist.sum()
    min_share = min_share if min_share is not None else 0.25 / num_classes
    nonzero = share[share > 0]
    return {
        "classes_present": int((share >= min_share).sum()),
        "classes_total": num_classes,
        "class_presence_threshold": min_share,
        "class_histogram": hist.long().tolist(),
        "class_entropy_bits": float(-(nonzero * nonzero.log2()).sum()),
    }


def sharpness(images: torch.Tensor) -> float:
    """Mean over images of the variance of the Laplacian of the grayscale image (higher = sharper)."""
    gray = images.float().mean(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    lap = F.conv2d(gray, kernel)
    return float(lap.flatten(1).var(1).mean())



def nearest_neighbour_distances(queries: torch.Tensor, reference, batch: int = CHUNK) -> torch.Tensor:
    """Euclidean distance from each query (N, D) to its nearest row of ``reference``: (N,) float64. ``reference``:
    a tensor (M, ...), or a callable returning an iterable of chunks (m, ...) (a large set read a piece at a time,
    each piece compared with every query once). The nearest row is found in float32 (the matrix-product form of
    cdist: half float64's time on 12,288-pixel images, most of a large sampler fit's guard) and its distance then
    computed exactly in float64, so an exact copy reads 0."""
    queries = queries.flatten(1)
    chunks = reference() if callable(reference) else reference.split(max(batch, 1))
    best = torch.full((len(queries),), float("inf"), dtype=torch.float64)
    for ref in chunks:
        ref = ref.flatten(1)
        ref32 = ref.float()
        for start in range(0, len(queries), batch):
            q = queries[start : start + batch]
            nearest = torch.cdist(q.float(), ref32).argmin(1)
            part = (q.double() - ref[nearest].double()).norm(dim=1)
            best[start : start + batch] = torch.minimum(best[start : start + batch], part)
    return best


COPY_PERCENTILE = 0.01  # the copy share's threshold: this quantile of unseen images' nearest-neighbour distances


def copy_share(samples: torch.Tensor, reference: torch.Tensor, percentile: float = COPY_PERCENTILE) -> float:
    """The share of samples nearer to a training image than the closest ``percentile`` of unseen images are, from
    nearest-neighbour distances to the training set of each (N,) and (M,): about ``percentile`` for samples as
    novel as unseen images; a sampler that copies a tenth of its draws reads about 0.1 more. A median ratio passes
    with up to half the draws exact copies; this catches a minority."""
    return float((samples < torch.quantile(reference.double(), percentile)).double().mean())


def memorisation(samples: torch.Tensor, train, held_out: torch.Tensor,
                 held_out_reconstructions: torch.Tensor | None = None) -> dict:
    """Whether samples copy training images: the median distance of each sample to its nearest training image
    against the same median for held-out real images (never trained on). A ratio near 1 is what unseen data of the
    same distribution gives; far below 1, the samples sit on training images (the issue's guard: >= 0.9).
    ``copy_share`` (and ``copy_share_to_reconstructions``): the share of samples nearer to a training image than the
    closest 1% of the reference's images (``copy_share``), which catches a minority of copies the median lets by.
    All sets (N, ...) in one space: pixels (flattened) or features; ``train`` a tensor or a callable returning its
    chunks (``nearest_neighbour_distances``), read once for all three query sets.

    In pixels a blurred image is closer to its nearest neighbour than a sharp one, so a blurry model's samples score
    below 1 without copying anything (cvae-mnist's prior draws: 0.78). ``held_out_reconstructions`` (the model's
    reconstructions of the held-out images: unseen images with the model's own blur) gives a second reference,
    ``ratio_to_reconstructions``, that a blurry model's honest samples reach and copies of training images still
    fail (a training image's reconstruction is closer to it than any unseen image's is)."""
    sets = [samples.flatten(1), held_out.flatten(1)]
    if held_out_reconstructions is not None:
        sets.append(held_out_reconstructions.flatten(1))
    train_count = [0]

    def counted():
        for chunk in train() if callable(train) else train.split(CHUNK):
            train_count[0] += len(chunk)
            yield chunk

    queries = torch.cat([q.float() for q in sets])
    distances = nearest_neighbour_distances(queries, counted).split([len(q) for q in sets])
    theirs, own = float(distances[0].median()), float(distances[1].median())
    result = {"median_nn_samples": theirs, "median_nn_held_out": own,
              "ratio": theirs / own if own > 0 else float("nan"), "samples": len(samples), "held_out": len(held_out),
              "train": train_count[0], "copy_share": copy_share(distances[0], distances[1])}
    if held_out_reconstructions is not None:
        blurred = float(distances[2].median())
        result.update({"median_nn_reconstructions": blurred,
                       "ratio_to_reconstructions": theirs / blurred if blurred > 0 else float("nan"),
                       "copy_share_to_reconstructions": copy_share(distances[0], distances[2])})
    return result
