"""Run under torchrun by test_distributed.py: trains a tiny VAE and records, per rank and step, the data indices
it saw and a checksum of its parameters. On ranks other than 0 every run-folder write raises."""

import json
import os
import sys

import torch

from vaelab.config import load_config
from vaelab.processes import leave_process_group
from vaelab.run import RunFolder
from vaelab.training import Trainer


def main(out, record, batch_size, steps):
    rank = int(os.environ.get("RANK", 0))
    if rank != 0:
        def forbidden(*args, **kwargs):
            raise AssertionError(f"rank {rank} wrote to the run folder")

        for name in ("save_checkpoint", "save_weights", "write_config"):
            setattr(RunFolder, name, forbidden)
    preset = os.environ.get("VAELAB_TEST_PRESET")
    if preset:  # a hybrid whose step takes decisions (VAE-GAN's skipped discriminator step, AVAE's k_t)
        # tiny for every arch: the dcgan arch of the AVAE preset reads widths, the began arch filters
        sizes = {"vaegan-mnist": ["model.widths=[8, 16]", "model.discriminator_widths=[8, 16]", "model.latent_dim=4",
                                  "model.balance_margin=0.7", "model.augment=translation", "model.augment_below_images=null",
                                  "model.augment_target=0.6", "model.augment_speed_images=1000"],
                 "avae-khan-mnist": ["model.widths=[4, 8]", "model.filters=4", "model.latent_dim=4",
                                     "model.lambdas=[0.1, 0.01, 0.01]"]}[preset]
        cfg = load_config(preset=preset, overrides=[*sizes, f"train.batch_size={batch_size}", f"train.max_steps={steps}",
                                                    "train.log_every=1", "train.trackers=[]",
                                                    "train.num_sample_images=4", "train.precision=fp32"])
    else:
        cfg = load_config(overrides=[
            "model.widths=[8, 16]", "model.latent_dim=4", "model.norm=none", f"train.batch_size={batch_size}",
            # sigma = exp(-15): z = mu, so the per-process reparameterisation noise cannot tell the runs apart
            "model.logvar_min=-30", "model.logvar_max=-30",
            f"train.max_steps={steps}", "train.log_every=1", "train.trackers=[]", "train.num_sample_images=4",
            "train.checkpoint_every_steps=2",  # device "auto", as the CLI default
            "train.precision=fp32"])  # the doubled-batch comparison is exact up to float order only in fp32
    nan_step = int(os.environ.get("VAELAB_TEST_NAN_ON_RANK1_AT_STEP", "0"))
    if nan_step:  # rank 1 alone sees a NaN KL on that step; --on-nan rollback must take both ranks back together
        cfg.train.on_nan = "rollback"
        if rank == 1:
            import vaelab.models.vae as vae_module

            real_kl, calls = vae_module.kl_standard_normal, {"n": 0}

            def kl_that_breaks(mu, logvar):
                calls["n"] += 1
                return real_kl(mu, logvar) * (float("nan") if calls["n"] == nan_step else 1.0)

            vae_module.kl_standard_normal = kl_that_breaks
    trainer = Trainer(cfg, out, progress=False)
    if preset == "vaegan-mnist":
        # The two ranks' own discriminator losses straddle the margin 0.7: rank 0's always below it (it alone would
        # always skip), rank 1's above it (it alone would never skip), and their mean below it on odd steps (0.5)
        # and above it on even ones (0.8). Only a decision from the mean over processes agrees on both ranks.
        own_losses, calls = trainer.model.losses, {"n": 0}

        def straddling(x):
            t = own_losses(x)
            calls["n"] += 1
            value = 0.1 if rank == 0 else (0.9 if calls["n"] % 2 else 1.5)
            t["d_real_loss"] = t["d_fake_loss"] = t["d_real_loss"].detach() * 0 + value
            # adaptive augmentation's r_t the same way: rank 0 alone would raise p (1.0 > 0.6), rank 1 alone
            # lower it (0.3), their mean (0.65) raises it on both
            t["d_real_sign"] = t["d_real_sign"] * 0 + (1.0 if rank == 0 else 0.3)
            return t

        trainer.model.losses = straddling
    if rank == 0:
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, f"{record}-init.pt")
    seen = []
    step_fn = trainer.model.training_step

    def recording_step(batch, ctx):
        losses = step_fn(batch, ctx)
        checksum = sum(float(p.double().sum()) for p in trainer.model.parameters())
        controller = getattr(trainer.model, "controller", None)
        seen.append({"indices": batch["index"].tolist(), "checksum": checksum,
                     "k": controller.k if controller else None,
                     "d_updated": float(losses["d_updated"]) if "d_updated" in losses else None,
                     "augment_p": float(losses["augment_p"]) if "augment_p" in losses else None})
        return losses

    trainer.model.training_step = recording_step
    trainer.fit()
    with open(f"{record}-rank{rank}.json", "w") as fh:
        json.dump({"world": trainer.world, "steps": seen, "rollbacks": trainer.rollbacks,
                   "parameters": sum(p.numel() for p in trainer.model.parameters())}, fh)
    leave_process_group()  # as the CLI does: exiting with the gloo group open can abort one rank at teardown


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
