"""Using a trained model's latent space: interpolation, attribute vectors and edits, anomaly scores, latent maps.

Everything here reads only the run folder (and, for data, the dataset its config names).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .data import load_data, spaced_indices
from .errors import VaelabError
from .progress import Phase
from .run import atomic_write, atomic_write_text

ATTRIBUTES_FILE = "attributes.safetensors"
# training images the attribute vectors average over (spread over the split): a difference of two means over
# 20,000 codes has a standard error far below the vectors' lengths, and a 200,000-image split took 144 s to encode
ATTRIBUTE_IMAGES = 20_000


# ---------------------------------------------------------------------------------------------------
# Interpolation
# ---------------------------------------------------------------------------------------------------


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents a, b (D,) at fractions t (T,) -> (T, D) (Shoemake 1985; White 2016)."""
    cos = torch.dot(a / a.norm(), b / b.norm()).clamp(-1, 1)
    omega = torch.acos(cos)
    if omega.abs() < 1e-4:
        return torch.lerp(a[None], b[None], t[:, None])
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so)[:, None] * a + (torch.sin(t * omega) / so)[:, None] * b


def resolve_latent(model, spec: str, data_split=None, label: int | None = None):
    """A latent (D,) from an endpoint spec: an image file, ``seed:N`` (a draw from the model's latent sampler, of
    class ``label`` where the sampler was fitted per class; the prior where none is fitted), or a test-set index
    ``N``.

    Returns (z, image or None, label or None).
    """
    c = model.config
    if spec.startswith("seed:"):
        g = torch.Generator().manual_seed(int(spec[5:]))
        sampler = getattr(model, "latent_sampler", None)
        if sampler is not None:
            y = torch.tensor([label]) if label is not None and sampler.class_names else None
            return sampler.sample(1, generator=g, y=y)[0], None, label
        return torch.randn(c.latent_dim, generator=g), None, label
    if not model.has_encoder:
        raise VaelabError(f"{model.registry_name} has no encoder: interpolate between seeds (--from seed:1 --to seed:2)")
    path = Path(spec)
    if spec.isdigit():
        if data_split is None:
            raise VaelabError("a dataset index needs the run's data")
        index = int(spec)
        if index >= len(data_split):
            raise VaelabError(f"index {index} is out of range: the test split has {len(data_split)} images")
        x = data_split.take(torch.tensor([index])).float().cpu() / 255.0
        y = None if data_split.labels is None else data_split.labels[index : index + 1]
    elif path.is_file():
        x = _read_one(path, c.channels, c.image_size)
        y = None
    else:
        raise VaelabError(f"cannot read endpoint {spec!r}: give an image file, a test-set index, or seed:N")
    if model.is_conditional and y is None:
        raise VaelabError("a conditional model needs the label of its endpoints: use test-set indices")
    with torch.no_grad():
        mu, _ = model.encode(x.to(model.device), None if y is None else y.to(model.device))
    return mu[0].cpu(), x[0], None if y is None else int(y[0])


def _read_one(path: Path, channels: int, size: int) -> torch.Tensor:
    """One image file -> (1, C, S, S) float in [0, 1]."""
    from .data import image_tensor

    try:
        return image_tensor(path, channels, size)[None]
    except Exception as exc:
        raise VaelabError(f"cannot read image {path}: {exc}") from None


@torch.no_grad()
def interpolate(model, za: torch.Tensor, zb: torch.Tensor, steps: int, spherical: bool = False, label: int | None = None):
    """Decoded images along the path from za to zb: (steps, C, H, W) in [0, 1]."""
    t = torch.linspace(0, 1, steps)
    z = slerp(za, zb, t) if spherical else torch.lerp(za[None], zb[None], t[:, None])
    y = None if label is None else torch.full((steps,), label, dtype=torch.long, device=model.device)
    return model.decode(z.to(model.device), y).float().cpu()


def save_gif(frames: torch.Tensor, path: Path, duration_ms: int = 120, scale: int = 4) -> None:
    """frames (T, C, H, W) in [0, 1] -> an animated GIF that goes there and back."""
    from PIL import Image

    images = []
    for f in frames:
        arr = (f.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        images.append(img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST))
    images = images + images[-2:0:-1]
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=duration_ms, loop=0))


# ---------------------------------------------------------------------------------------------------
# Attribute vectors (AVAE paper, section 5.5; White 2016)
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def image_batches(x, batch: int):
    """(start, float (b, C, H, W) in [0, 1]) over images x: a float tensor (N, C, H, W), or a split
    (``data.ImageSet``, uint8, read a batch at a time: a 200,000-image split is never held as floats)."""
    from .data import ImageSet

    for start in range(0, len(x), batch):
        if isinstance(x, ImageSet):
            yield start, x.take(torch.arange(start, min(start + batch, len(x)))).float() / 255.0
        else:
            yield start, x[start : start + batch]


@torch.no_grad()
def encode_all(model, x, y: torch.Tensor | None = None, batch: int = 500, what: str = "encoding images") -> torch.Tensor:
    """Posterior means (N, D) of images x (a float tensor (N, C, H, W) or a split, see ``image_batches``), with a
    progress line under ``what``."""
    out = []
    with Phase(what, total=len(x)) as phase:
        for i, xb in image_batches(x, batch):
            yb = None if y is None or not model.is_conditional else y[i : i + batch].to(model.device)
            out.append(model.encode(xb.to(model.device), yb)[0].float().cpu())
            phase.advance(len(xb))
    return torch.cat(out)


def attribute_table(run_data, labels_csv: str | None):
    """(names, matrix (N, A) of 0/1) over the run's training split: from a CSV, the dataset's attributes, or classes."""
    split = run_data.train
    if labels_csv:
        raise VaelabError("--labels CSV needs a folder dataset: train with data.labels_csv instead")
    if split.attributes is not None and run_data.attribute_names:
        return list(run_data.attribute_names), (split.attributes > 0).float()
    if split.labels is not None and run_data.num_classes >= 2:
        names = [f"class_{c}" for c in run_data.class_names]
        return names, torch.nn.functional.one_hot(split.labels, run_data.num_classes).float()
    raise VaelabError(f"{run_data.description} has no labels or attributes to build attribute vectors from")


def compute_attribute_vectors(model, run_folder: Path, labels_csv: str | None = None) -> dict:
    """Per attribute: mean latent of images with it minus mean of images without it. Saved in the run folder."""
    from safetensors.torch import save_file

    if not model.has_encoder:
        raise VaelabError(f"{model.registry_name} has no encoder, so it has no attribute vectors")
    if model.is_conditional:
        raise VaelabError("a conditional model takes the class as input; attribute vectors are for unconditional models")
    data = load_data(model.run_config.data)
    names, table = attribute_table(data, labels_csv)
    rows = spaced_indices(len(data.train), ATTRIBUTE_IMAGES)  # a mean's error is tiny long before 200,000 images
    table = table[rows]
    z = encode_all(model, data.train.select(rows), what="encoding the training images for the attribute vectors")
    vectors, counts = {}, {}
    for i, name in enumerate(names):
        has = table[:, i] > 0.5
        if has.sum() == 0 or (~has).sum() == 0:
            continue
        vectors[name] = (z[has].mean(0) - z[~has].mean(0)).contiguous()
        counts[name] = [int(has.sum()), int((~has).sum())]
    atomic_write(run_folder / ATTRIBUTES_FILE, lambda tmp: save_file(vectors, tmp))
    atomic_write_text(run_folder / "attributes.json", json.dumps({"counts_with_without": counts, "images": len(rows),
                                                                  "training_images": len(data.train)}, indent=2) + "\n")
    return {"attributes": list(vectors), "counts": counts}


def load_attribute_vectors(run_folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(run_folder) / ATTRIBUTES_FILE
    if not path.is_file():
        raise VaelabError(f"no attribute vectors in {run_folder}; compute them with `vaelab attributes {run_folder}`")
    return load_file(path)


@torch.no_grad()
def edit(model, z: torch.Tensor, vectors: dict[str, torch.Tensor], strengths: dict[str, float]) -> torch.Tensor:
    """Decode z (D,) moved along attribute vectors: z + sum_a s_a v_a. Returns (1, C, H, W)."""
    for name in strengths:
        if name not in vectors:
            raise VaelabError(f"unknown attribute {name!r}; known: {', '.join(sorted(vectors))}")
    moved = z + sum(s * vectors[n] for n, s in strengths.items())
    return model.decode(moved[None].to(model.device)).float().cpu()


@torch.no_grad()
def strength_sweep(model, z, vectors, name: str, strengths=(-2, -1, -0.5, 0, 0.5, 1, 1.5, 2)) -> torch.Tensor:
    zs = torch.stack([z + s * vectors[name] for s in strengths])
    return model.decode(zs.to(model.device)).float().cpu()


# ---------------------------------------------------------------------------------------------------
# Anomaly scores
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def anomaly_scores(model, x, method: str = "elbo", k: int = 100, seed: int = 0, batch: int = 100) -> torch.Tensor:
    """Per-image anomaly score (N,), higher = more anomalous: -ELBO (mean of 10 draws) or -IWAE(k), in nats. x: a
    float tensor (N, C, H, W) or a split (``image_batches``)."""
    if not model.has_encoder:
        raise VaelabError(f"{model.registry_name} has no encoder: anomaly scores need an encoder")
    if method == "iwae" and not model.has_likelihood:
        raise VaelabError(f"{model.registry_name} has no normalised likelihood: use --score elbo")
    model.eval()
    scores = []
    with torch.random.fork_rng(devices=[]), Phase(f"scoring images ({method})", total=len(x)) as phase:
        torch.manual_seed(seed)
        for _, xb in image_batches(x, batch):
            xb = xb.to(model.device)
            if method == "iwae":
                scores.append(-model.log_likelihood(xb, k).cpu())
            else:
                draws = torch.stack([model.elbo(xb)["elbo"] for _ in range(10)])
                scores.append(-draws.mean(0).cpu())
            phase.advance(len(xb))
    return torch.cat(scores)


def read_anomaly_labels(path: Path, names: list[str]) -> torch.Tensor:
    """The 0/1 labels (len(names),) of the images ``names`` (paths relative to the scored folder) from a CSV of
    file,label rows with a header (1 = anomalous); a row may name the file by its base name."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    try:
        table = {row[0]: int(row[1]) for row in rows if len(row) >= 2}
    except ValueError as exc:
        raise VaelabError(f"{path}: a label is not 0 or 1 ({exc}); write rows of file,label") from None
    missing = [n for n in names if n not in table and Path(n).name not in table]
    if missing:
        raise VaelabError(f"{path} has no label for {len(missing)} image(s), e.g. {missing[:3]}")
    return torch.tensor([table.get(n, table.get(Path(n).name)) for n in names])


def roc_auc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_anomaly.numpy(), scores.numpy()))


def write_scores(path: Path, files: list[str], scores: torch.Tensor, labels=None) -> None:
    rows = [["file", "score", *(["label"] if labels is not None else [])]]
    for i, (f, s) in enumerate(zip(files, scores.tolist())):
        rows.append([f, f"{s:.6f}", *([int(labels[i])] if labels is not None else [])])

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)

    atomic_write(path, write)


def plot_histogram(scores: torch.Tensor, path: Path, labels: torch.Tensor | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    if labels is None:
        ax.hist(scores.numpy(), bins=40)
    else:
        ax.hist(scores[labels == 0].numpy(), bins=40, alpha=0.6, label="normal")
        ax.hist(scores[labels == 1].numpy(), bins=40, alpha=0.6, label="anomalous")
        ax.legend()
    ax.set_xlabel("anomaly score (nats)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Latent maps
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def manifold_grid(model, n: int = 20, label: int | None = None) -> torch.Tensor:
    """For a 2-D latent: decode an n x n grid at the N(0, 1) quantiles 0.05..0.95 (Kingma & Welling 2014, fig. 4)."""
    q = torch.distributions.Normal(0, 1).icdf(torch.linspace(0.05, 0.95, n))
    zz = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)
    y = None if label is None else torch.full((len(zz),), label, dtype=torch.long, device=model.device)
    return model.decode(zz.to(model.device), y).float().cpu()


def latent_scatter(z: torch.Tensor, labels: torch.Tensor | None, path: Path, method: str = "pca", seed: int = 0) -> str:
    """Scatter of encodings coloured by class: the latent itself for D = 2, else PCA or t-SNE to 2-D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, d = z.shape
    if d <= 2 or n < 2:  # nothing to project (a 1-D latent is drawn on a line; one encoding as its first two dims)
        points, how = torch.nn.functional.pad(z[:, :2], (0, max(0, 2 - d))).numpy(), "latent"
    elif method == "tsne" and n > 2:
        from sklearn.manifold import TSNE

        # sklearn needs perplexity < number of points; 30 is its default
        points = TSNE(2, random_state=seed, init="pca", perplexity=min(30.0, n - 1.0)).fit_transform(z.numpy())
        how = "t-SNE"
    else:
        from sklearn.decomposition import PCA

        points, how = PCA(2, random_state=seed).fit_transform(z.numpy()), "PCA"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=None if labels is None else labels.numpy(), s=6, cmap="tab10")
    if labels is not None:
        fig.colorbar(sc, ax=ax, label="class")
    ax.set_title(f"test encodings ({how})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return how
