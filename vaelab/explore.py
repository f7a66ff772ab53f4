"""``vaelab explore``: a Gradio page to walk a trained model's latent space.

Sliders for the latent dimensions (ordered by their average KL on test images, the top 16 when the latent is
large) with a live decoded image; random and reset buttons; a class picker for conditional models; an
interpolation tab; a reconstruct-your-image tab; an attribute tab when attribute vectors exist. Offline: no
analytics, no share links, bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

MAX_SLIDERS = 16
DISPLAY_PX = 256


def _offline_environment() -> None:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def dimension_order(model, data) -> tuple[list[int], list[float]]:
    """Latent dimensions sorted by their average KL over (up to 1,000) validation images (the test images where a
    run has none), most informative first."""
    d = model.config.latent_dim
    if not model.has_encoder or data is None:
        return list(range(d)), [0.0] * d
    from .data import first_images

    split = data.validation if len(data.validation) else data.test
    x = first_images(split, 1000)
    y = split.labels[: len(x)] if model.is_conditional else None
    kl = torch.zeros(d)
    with torch.no_grad():
        for start in range(0, len(x), 100):  # in batches: a thousand 128 px images' activations at once are GBs
            yb = None if y is None else y[start : start + 100].to(model.device)
            mu, logvar = model.encode(x[start : start + 100].to(model.device), yb)
            kl += (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(0).float().cpu()
    kl = kl / len(x)
    order = torch.argsort(kl, descending=True).tolist()
    return order, kl[order].tolist()


def to_display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 (DISPLAY_PX, DISPLAY_PX, 3) with nearest-neighbour upscaling."""
    arr = (image.clamp(0, 1) * 255).round().byte()
    if arr.shape[0] == 1:
        arr = arr.expand(3, -1, -1)
    scale = max(1, DISPLAY_PX // arr.shape[-1])
    arr = arr.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return arr.permute(1, 2, 0).numpy()


class Explorer:
    """The state and callbacks behind the page (kept apart from Gradio so it can be tested directly)."""

    def __init__(self, run: str | Path, device: str = "auto"):
        from .data import load_data
        from .errors import VaelabError
        from .samplers import load

        self.run = Path(run)
        self.model = load(run, device=device)
        try:
            self.data = load_data(self.model.run_config.data)
        except VaelabError:  # the data may not be on this machine; everything but the KL order still works
            self.data = None
        self.order, self.kl = dimension_order(self.model, self.data)
        self.shown = self.order[:MAX_SLIDERS]
        self.base = torch.zeros(self.model.config.latent_dim)
        self.num_classes = getattr(self.model.config, "num_classes", None) or 0
        vectors_path = self.run / "attributes.safetensors"
        self.attributes = {}
        if vectors_path.is_file():
            from .latent import load_attribute_vectors

            self.attributes = load_attribute_vectors(self.run)

    def latent(self, values) -> torch.Tensor:
        """The latent of the sliders' values: the shown dimensions from the sliders, the others from ``base``
        (zeros, or the last random draw of a fitted sampler)."""
        z = self.base.clone()
        for dim, value in zip(self.shown, values):
            z[dim] = float(value)
        return z

    def _label(self, label) -> torch.Tensor | None:
        if not self.model.is_conditional:
            return None
        return torch.tensor([int(label or 0)], device=self.model.device)

    @torch.no_grad()
    def decode(self, values, label=0) -> np.ndarray:
        z = self.latent(values)[None].to(self.model.device)
        return to_display(self.model.decode(z, self._label(label))[0].float().cpu())

    def random(self, seed: int | None = None, label=None) -> list[float]:
        """Slider values of a random latent: a draw of the run's fitted sampler (of the class picked, where the
        sampler was fitted per class; the dimensions without a slider keep that draw's values), or of the prior
        where none is fitted."""
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        sampler = self.model.latent_sampler
        if sampler is None:
            return [round(float(v), 2) for v in torch.randn(len(self.shown), generator=g).clamp(-3, 3)]
        y = torch.tensor([int(label)]) if label is not None and sampler.class_names else None
        z = sampler.sample(1, generator=g, y=y)[0]
        self.base = z.clone()
        return [round(float(z[d].clamp(-3, 3)), 2) for d in self.shown]  # the sliders span -3..3

    def reset(self) -> list[float]:
        self.base = torch.zeros(self.model.config.latent_dim)
        return [0.0] * len(self.shown)

    @torch.no_grad()
    def interpolate(self, seed_a, seed_b, steps, spherical, label=0) -> np.ndarray:
        from .latent import interpolate

        from .latent import resolve_latent

        picked = int(label or 0) if self.model.is_conditional else None
        za, zb = (resolve_latent(self.model, f"seed:{int(seed)}", label=picked)[0] for seed in (seed_a, seed_b))
        frames = interpolate(self.model, za, zb, int(steps), bool(spherical),
                             int(label or 0) if self.model.is_conditional else None)
        return np.concatenate([to_display(f) for f in frames], axis=1)

    @torch.no_grad()
    def reconstruct(self, image, label=0) -> np.ndarray | None:
        """``image``: an uploaded file's path (EXIF rotation, 16-bit, palettes as in training) or a uint8 array."""
        if image is None or not self.model.has_encoder:
            return None
        from .data import image_tensor

        x = image_tensor(image, self.model.config.channels, self.model.config.image_size)[None]
        out = self.model.reconstruct(x.to(self.model.device), self._label(label))[0].float().cpu()
        return np.concatenate([to_display(x[0]), to_display(out)], axis=1)

    @torch.no_grad()
    def edit(self, values, *strengths) -> np.ndarray:
        z = self.latent(values)
        for (name, vector), s in zip(self.attributes.items(), strengths):
            z = z + float(s) * vector
        return to_display(self.model.decode(z[None].to(self.model.device))[0].float().cpu())


def build_app(explorer: Explorer):
    _offline_environment()
    import gradio as gr

    e = explorer
    with gr.Blocks(title=f"vaelab explorer: {e.run.name}", analytics_enabled=False) as app:
        gr.Markdown(f"## vaelab explorer: `{e.run}`\nModel `{e.model.registry_name}`, latent {e.model.config.latent_dim}; "
                    f"sliders for {len(e.shown)} dimensions, ordered by average KL on test images.")
        label = gr.Dropdown(list(range(max(1, e.num_classes))), value=0, label="class", visible=e.model.is_conditional,
                            elem_id="class-picker")
        with gr.Tab("Latent"):
            with gr.Row():
                with gr.Column(scale=2):
                    sliders = [gr.Slider(-3, 3, value=0, step=0.05,
                                         label=f"z[{dim}]  (KL {kl:.2f})", elem_id=f"z-slider-{i}")
                               for i, (dim, kl) in enumerate(zip(e.shown, e.kl))]
                    with gr.Row():
                        random_button = gr.Button("Random", elem_id="random")
                        reset_button = gr.Button("Reset", elem_id="reset")
                with gr.Column(scale=1):
                    image = gr.Image(value=e.decode([0] * len(sliders)), label="decoded", elem_id="decoded",
                                     interactive=False, format="png")
            inputs = [*sliders, label]
            decode = lambda *args: e.decode(args[:-1], args[-1])
            for s in sliders:
                s.change(decode, inputs, image, show_progress="hidden")
            label.change(decode, inputs, image, show_progress="hidden")
            random_button.click(lambda picked: e.random(label=picked if e.model.is_conditional else None), label,
                                sliders)
            reset_button.click(lambda: e.reset(), None, sliders)
        with gr.Tab("Interpolate"):
            with gr.Row():
                seed_a = gr.Number(1, label="from seed", precision=0)
                seed_b = gr.Number(2, label="to seed", precision=0)
                steps = gr.Slider(2, 16, value=8, step=1, label="steps")
                spherical = gr.Checkbox(False, label="slerp")
            go = gr.Button("Interpolate", elem_id="interpolate")
            strip = gr.Image(label="interpolation", interactive=False, format="png")
            go.click(e.interpolate, [seed_a, seed_b, steps, spherical, label], strip)
        if e.model.has_encoder:
            with gr.Tab("Reconstruct"):
                upload = gr.Image(label="your image", type="filepath")
                recon = gr.Image(label="input | reconstruction", interactive=False, format="png")
                upload.change(e.reconstruct, [upload, label], recon)
        if e.attributes:
            with gr.Tab("Attributes"):
                gr.Markdown("Move the current latent (from the Latent tab) along attribute vectors.")
                strengths = [gr.Slider(-3, 3, value=0, step=0.1, label=name) for name in e.attributes]
                edited = gr.Image(label="edited", interactive=False, format="png")
                for s in strengths:
                    s.change(lambda *args: e.edit(args[: len(sliders)], *args[len(sliders):]), [*sliders, *strengths], edited)
    return app


def launch(run: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto") -> None:
    _offline_environment()
    app = build_app(Explorer(run, device))
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True)
