"""vaelab vs pythae on the same VAE architecture, data split, batch size, optimizer and epochs, in one process.

pythae is a peer, not a dependency: run this from a separate virtual environment holding both, e.g.

    python3 -m venv /tmp/pythae-venv
    /tmp/pythae-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 pythae -e .
    /tmp/pythae-venv/bin/python benchmarks/pythae_compare.py --epochs 30 --k 1000
    /tmp/pythae-venv/bin/python benchmarks/pythae_compare.py --model vaegan --epochs 10

The encoder and decoder are vaelab's own modules of the ``vae-mnist`` preset, wrapped in pythae's BaseEncoder /
BaseDecoder, so both libraries train exactly the same network with the same loss (BCE summed over pixels + KL).
After training, pythae's weights are loaded into a vaelab VAE and both are measured with the same ELBO and IWAE
code on the 1,000 mnist5k test images.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vaelab.config import load_config
from vaelab.data import first_images, load_data
from vaelab.models import build_model
from vaelab.run import RunFolder
from vaelab.config import fill_data_shape
from vaelab.training import Trainer


class StepClock:
    """Seconds pythae spends in its trainers' ``train_step`` (one epoch of batches and optimizer steps, its data
    loader included, its per-epoch evaluation not): the counterpart of vaelab's ``train_seconds``. One entry per
    epoch, so both libraries can also be read as the median epoch after the first (warm-up) one."""

    def __init__(self):
        from pythae.trainers import BaseTrainer, CoupledOptimizerAdversarialTrainer

        self.epochs: list[float] = []
        for cls in {BaseTrainer, CoupledOptimizerAdversarialTrainer}:
            if "train_step" in vars(cls):
                cls.train_step = self._timed(cls.train_step)

    @property
    def seconds(self) -> float:
        return sum(self.epochs)

    def _timed(self, step):
        def timed(trainer, epoch):
            start = time.perf_counter()
            try:
                return step(trainer, epoch)
            finally:
                self.epochs.append(time.perf_counter() - start)
        return timed


def build_vaelab_model(epochs: int, precision: str = "fp32", preset: str = "vae-mnist"):
    return load_config(preset=preset, overrides=[f"train.epochs={epochs}", f"train.precision={precision}",
                                                 "train.trackers=[]", "train.device=cpu"])


def pythae_encoder_decoder(reference):
    """vaelab's own encoder (+ moments head) and decoder wrapped in pythae's BaseEncoder / BaseDecoder."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.encoder, self.to_moments = reference.encoder, reference.to_moments

        def forward(self, x):
            mu, logvar = self.to_moments(self.encoder(x)).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.decoder = reference.decoder

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.decoder(z)))

    return Encoder(), Decoder()


def train_pythae(cfg, x_train, x_test, epochs: int, out: Path):
    from pythae.models import VAE as PythaeVAE, VAEConfig as PythaeVAEConfig
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    torch.manual_seed(cfg.train.seed)
    reference = build_model(cfg.model)  # the same modules vaelab trains

    model = PythaeVAE(PythaeVAEConfig(input_dim=(1, 28, 28), latent_dim=cfg.model.latent_dim, reconstruction_loss="bce"),
                      *pythae_encoder_decoder(reference))
    trainer_cfg = BaseTrainerConfig(output_dir=str(out), learning_rate=cfg.model.lr, num_epochs=epochs,
                                    per_device_train_batch_size=cfg.train.batch_size,
                                    per_device_eval_batch_size=500, optimizer_cls="Adam", no_cuda=True)
    pipeline = TrainingPipeline(training_config=trainer_cfg, model=model)
    before = reference.to_moments.weight.detach().clone()
    start = time.perf_counter()
    pipeline(train_data=x_train, eval_data=x_test)
    seconds = time.perf_counter() - start
    # pythae trains the wrapped modules in place: the final weights (not a best-on-eval copy) are measured
    assert not torch.equal(before, reference.to_moments.weight), "pythae did not train the shared modules"
    return reference.eval(), seconds


def train_pythae_vaegan(cfg, x_train, x_test, epochs: int, out: Path):
    """pythae's VAEGAN (its own losses and CoupledOptimizerAdversarialTrainer) on vaelab's vaegan-mnist networks,
    RMSprop at the preset's learning rate for all three optimizers, as vaelab uses."""
    from pythae.models import VAEGAN as PythaeVAEGAN, VAEGANConfig as PythaeVAEGANConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDiscriminator
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import CoupledOptimizerAdversarialTrainerConfig

    torch.manual_seed(cfg.train.seed)
    reference = build_model(cfg.model)

    class Discriminator(BaseDiscriminator):
        depth = 1  # one feature layer: Dis_l, the same stage vaelab's feature loss uses

        def __init__(self):
            super().__init__()
            self.discriminator = reference.discriminator

        def forward(self, x, output_layer_levels=None):
            features, logit = self.discriminator(x)
            out = ModelOutput(embedding=torch.sigmoid(logit).unsqueeze(1))
            for level in output_layer_levels or []:
                out[f"embedding_layer_{level}"] = features
            return out

    model = PythaeVAEGAN(PythaeVAEGANConfig(input_dim=(1, 28, 28), latent_dim=cfg.model.latent_dim,
                                            reconstruction_layer=1),
                         *pythae_encoder_decoder(reference), discriminator=Discriminator())
    lr = cfg.model.lr
    trainer_cfg = CoupledOptimizerAdversarialTrainerConfig(
        output_dir=str(out), num_epochs=epochs, per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=500, no_cuda=True, encoder_optimizer_cls="RMSprop", decoder_optimizer_cls="RMSprop",
        discriminator_optimizer_cls="RMSprop", encoder_learning_rate=lr, decoder_learning_rate=lr,
        discriminator_learning_rate=lr)
    pipeline = TrainingPipeline(training_config=trainer_cfg, model=model)
    start = time.perf_counter()
    pipeline(train_data=x_train, eval_data=x_test)
    return reference.eval(), time.perf_counter() - start


def measure_samples(model, x_test, classifier) -> dict:
    """For models without a pixel likelihood: reconstruction MSE and FID / precision / recall of 1,000 samples in
    the domain classifier's feature space (the same code for both libraries)."""
    from vaelab.evaluate import generate
    from vaelab.metrics import samples as sm

    model.eval()
    with torch.no_grad():
        mse = float((model.reconstruct(x_test) - x_test).pow(2).mean())
        fake, _ = generate(model, len(x_test), 0, 10)
        f_real, f_fake = classifier.features(x_test), classifier.features(fake)
    return {"mse": mse, "fid": sm.fid(f_real, f_fake), **sm.precision_recall(f_real, f_fake, k=3)}


def measure(model, x_test, k: int) -> dict:
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        elbo = torch.cat([model.elbo(x_test[i : i + 500])["elbo"] for i in range(0, len(x_test), 500)]).mean()
        iwae = torch.cat([model.log_likelihood(x_test[i : i + 50], k) for i in range(0, len(x_test), 50)]).mean()
    return {"elbo": float(elbo), "iwae": float(iwae)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["vae", "vaegan"], default="vae")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="training runs per library, taken in turn")
    parser.add_argument("--classifier", default="classifiers/mnist5k",
                        help="vaegan: domain classifier folder (`vaelab train-classifier` makes it)")
    args = parser.parse_args()
    preset = "vae-mnist" if args.model == "vae" else "vaegan-mnist"
    cfg = build_vaelab_model(args.epochs, preset=preset)
    data = load_data(cfg.data)
    fill_data_shape(cfg, data)
    x_train, x_test = first_images(data.train, len(data.train)), first_images(data.test, len(data.test))
    n_pythae = args.epochs * len(x_train)  # pythae keeps the ragged last batch; vaelab drops it (counted below)
    if args.model == "vae":
        train_peer, score = train_pythae, lambda m: measure(m, x_test, args.k)
    else:
        from vaelab.metrics.features import ClassifierExtractor

        classifier = ClassifierExtractor(args.classifier)
        train_peer, score = train_pythae_vaegan, lambda m: measure_samples(m, x_test, classifier)
    runs: dict[str, list[dict]] = {"pythae": [], "vaelab fp32": [], "vaelab bf16": []}
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        # the libraries take turns, so a drift of the machine (+-10% here between runs) hits both alike
        for repeat in range(args.repeats):
            clock.epochs.clear()
            model, seconds = train_peer(cfg, x_train, x_test, args.epochs, Path(tmp) / f"pythae-{repeat}")
            runs["pythae"].append({"seconds": seconds, "images_per_s": n_pythae / seconds,
                                   "step_images_per_s": n_pythae / clock.seconds,
                                   "median_epoch_images_per_s": len(x_train) / statistics.median(clock.epochs[1:] or clock.epochs),
                                   **(score(model) if repeat == 0 else {})})
            for precision in ("fp32", "bf16"):
                run_cfg = build_vaelab_model(args.epochs, precision, preset)
                out = Path(tmp) / f"vaelab-{precision}-{repeat}"
                start = time.perf_counter()
                trainer = Trainer(run_cfg, out, progress=False)
                summary = trainer.fit()
                seconds = time.perf_counter() - start
                n_vaelab = summary["steps"] * run_cfg.train.batch_size
                epochs = [row["images_per_s"] for row in RunFolder(out).read_metrics() if row.get("event") == "epoch"]
                runs[f"vaelab {precision}"].append({"seconds": seconds, "images_per_s": n_vaelab / seconds,
                                                    "step_images_per_s": summary["images_per_s"],
                                                    "median_epoch_images_per_s": statistics.median(epochs[1:] or epochs),
                                                    **(score(trainer.model.float()) if repeat == 0 else {})})
    timing = ("seconds", "images_per_s", "step_images_per_s", "median_epoch_images_per_s")
    # timings: the median over the repeats; quality: the first repeat (the same seed gives the same model)
    results = {name: {**reps[0], **{k: statistics.median(r[k] for r in reps) for k in timing}}
               for name, reps in runs.items()}
    base, step_base = results["pythae"]["images_per_s"], results["pythae"]["step_images_per_s"]
    epoch_base = results["pythae"]["median_epoch_images_per_s"]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{preset} networks, mnist5k train split (4,000), batch {cfg.train.batch_size}, lr {cfg.model.lr}, "
          f"{args.epochs} epochs. Training steps: images/s inside the epochs' batch loops (data loading included, "
          f"per-epoch evaluation excluded), all epochs, and the median epoch after the first (warm-up) one; whole "
          f"call: wall time of the whole training call (both evaluate the test set every epoch; vaelab also writes "
          f"grids, checkpoints and curves). Timings: median of {args.repeats} interleaved repeats")
    metrics = [k for k in results["pythae"] if k not in (*timing, "pr_k")]  # pr_k: the neighbours of precision / recall
    print(f"| library | training steps img/s | ratio vs pythae | median epoch img/s | ratio | whole call s | "
          f"whole call img/s | ratio | {' | '.join(metrics)} |")
    print("|---" * (8 + len(metrics)) + "|")
    for name, r in results.items():
        epoch_rate = r["median_epoch_images_per_s"]
        print(f"| {name} | {r['step_images_per_s']:.0f} | {r['step_images_per_s'] / step_base:.2f}x | "
              f"{epoch_rate:.0f} | {epoch_rate / epoch_base:.2f}x | "
              f"{r['seconds']:.1f} | {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | "
              + " | ".join(f"{r[m]:.3f}" for m in metrics) + " |")
    print("training steps img/s per repeat: " + "; ".join(
        f"{name} " + " ".join(f"{r['step_images_per_s']:.0f}" for r in reps) for name, reps in runs.items()))


if __name__ == "__main__":
    main()
