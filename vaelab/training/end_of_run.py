"""What a run does after its last step (``finish``): its state and grids where a budget stopped it inside an epoch,
the held-out likelihood, the last weights, the confirmation of the best-scored epoch on fresh draws
(``confirm_best``), the default latent sampler's fit on the kept weights (``fit_default_sampler``) and
summary.json. Each optional part that fails warns and the run still ends with its files."""

from __future__ import annotations

import json

import torch

from ..models.registry import build_model
from ..run import atomic_write_text
from .monitor import held_out_likelihood

CONFIRM_DRAWS = 3  # fresh latent draws that confirm the best-scored epoch against the last weights


def best_confirmation(best_fids: list[float], last_fids: list[float]) -> dict:
    """Whether the best-scored weights beat the last ones on the same fresh draws (paired FIDs, lower is better): by
    more than one standard error of the paired gains."""
    gains = [last - best for best, last in zip(best_fids, last_fids)]
    mean = sum(gains) / len(gains)
    error = (sum((g - mean) ** 2 for g in gains) / max(len(gains) - 1, 1)) ** 0.5 / len(gains) ** 0.5
    return {"draws": len(gains), "best_fids": list(best_fids), "last_fids": list(last_fids),
            "best_mean": sum(best_fids) / len(gains), "last_mean": sum(last_fids) / len(gains), "mean_gain": mean,
            "standard_error": error, "confirmed": mean > error}


def confirm_best(trainer) -> dict | None:
    """Keep the best-scored epoch's weights only where fresh draws confirm them against the last weights.

    The kept epoch is the minimum of many noisy scores (one draw each; on a small folder against a few dozen
    validation images), so its own score flatters it. Both weights are scored again on ``CONFIRM_DRAWS`` draws
    neither was chosen on; the best stay only if they beat the last weights by more than one standard error of
    the paired differences, else model-best.* is removed and the run keeps its last weights (and says so)."""
    best = trainer.run.best_info()
    if best is None or trainer.quality is None or best.get("step") == trainer.pos.step:
        return None
    with torch.random.fork_rng(devices=[]):
        kept = build_model(trainer.cfg.model).to(trainer.device)
        kept.load_state_dict(trainer.run.load_weights(trainer.run.best_weights_path))
        last = trainer.sampled_model
        proxy = trainer.quality.sampler_proxy
        if proxy is not None:  # fitted once per weights (deterministic), not once per draw
            kept.latent_sampler, last.latent_sampler = proxy(kept), proxy(last)
        draws = range(1, CONFIRM_DRAWS + 1)
        # fresh draws against validation images the epochs were not chosen on, where the split has them
        judge = trainer.quality.unseen_reference() or trainer.quality
        try:
            best_scores = [judge.score(kept, draw=d) for d in draws]
            last_scores = [judge.score(last, draw=d) for d in draws]
        finally:
            last.latent_sampler = None
    check = best_confirmation(best_scores, last_scores)
    check["reference"] = ("validation images the epochs were not chosen on" if judge is not trainer.quality else
                          f"the {trainer.quality.n} validation images the epochs were chosen on (the split has "
                          f"fewer than {2 * trainer.quality.n}: no others to confirm on)")
    if check["confirmed"]:
        atomic_write_text(trainer.run.best_info_path, json.dumps({**best, "confirmation": check}, indent=2) + "\n")
        return {"kept": "best", "epoch": best["epoch"], **check}
    trainer.run.best_weights_path.unlink(missing_ok=True)
    trainer.run.best_info_path.unlink(missing_ok=True)
    message = (f"kept the last weights (model.safetensors): the best-scored epoch {best['epoch']} did not beat them "
               f"on {check['draws']} fresh draws (validation FID {check['best_mean']:.2f} against "
               f"{check['last_mean']:.2f}, standard error of the gain {check['standard_error']:.2f})")
    if trainer.progress:
        print(message, flush=True)
    trainer.log({"event": "best_weights", "step": trainer.pos.step, "message": message})
    return {"kept": "last", "epoch_scored_best": best["epoch"], **check}

def fit_default_sampler(trainer) -> dict:
    """Fit the run's default latent sampler on its kept weights (vaelab.samplers.fit_sampler), choosing its
    settings on the validation images, and save it in the run folder; its entry in summary.json (the prior, and
    why, where the copy guard refused every candidate)."""
    from ..samplers import describe, fit_sampler, refused_record

    kind = trainer.cfg.train.sampler
    with torch.random.fork_rng(devices=[]):
        if trainer.progress:
            print(f"fitting the {kind} latent sampler on the training codes (settings chosen on the validation "
                  f"images)", flush=True)
        sampler = fit_sampler(trainer.run.path, kind, seed=trainer.cfg.train.seed, progress=trainer.progress,
                              device=trainer.device)
    if sampler is None:
        reason = refused_record(trainer.run.path, kind)["reason"]
        trainer.log({"event": "warning", "step": trainer.pos.step,
                  "message": f"no {kind} sampler kept ({reason}); the run samples from the prior"})
        return {"kind": "prior", "fallback_from": kind, "reason": reason}
    chosen = sampler.settings["chosen"]
    if trainer.progress:
        print(f"sampler: {kind}, {describe(chosen)}: validation FID {chosen['validation_fid']:.2f} "
              f"(sampler-{kind}.safetensors)", flush=True)
    return {"kind": kind, **chosen}

def finish(trainer, reason: str) -> dict:
    scored = {}
    if reason != "epochs":  # stopped inside an epoch: keep its state and its grids
        trainer.save_checkpoint()
        trainer.optional("the sample grids", lambda: trainer.write_grids_at(f"step-{trainer.pos.step:08d}"))
        if reason in ("max_steps", "time_budget") and trainer.cfg.train.track_best and trainer.is_main:
            # the weights a budget stopped at are a candidate too: without this a run stopped by --time-budget
            # would keep the last finished epoch's choice and never weigh the training after it
            scored = trainer.optional("the best-weights score", trainer.track_best) or {}
    summary = {
        "model": trainer.model.registry_name,
        "data": trainer.data.description,
        "stopped_by": reason,
        "steps": trainer.pos.step,
        "epochs_done": trainer.pos.epoch,
        "train_seconds": trainer.elapsed,
        "images_per_s": trainer.pos.step * trainer.cfg.train.batch_size * trainer.world / max(trainer.elapsed, 1e-9),
        "precision": trainer.precision,
        "device": str(trainer.device),
        "processes": trainer.world,
    }
    trainer.sync_buffers()
    likelihood = held_out_likelihood(trainer.sampled_model, trainer.data.test, trainer.cfg.train.seed)
    if likelihood:
        summary["likelihood"] = likelihood
    if trainer.is_main:
        trainer.run.save_weights(trainer.sampled_model)
        if trainer.cfg.train.track_best and trainer.cfg.train.confirm_best:
            confirmed = trainer.optional("confirming the best weights", lambda: confirm_best(trainer))
            if confirmed is not None:
                summary["best_weights"] = confirmed
        if trainer.model.has_encoder and trainer.cfg.train.sampler != "prior":  # on the weights just saved
            fitted = trainer.optional("fitting the latent sampler", lambda: fit_default_sampler(trainer))
            if fitted is not None:
                summary["sampler"] = fitted
        atomic_write_text(trainer.run.summary_path, json.dumps(summary, indent=2) + "\n")
        from ..plots import plot_training_curves

        trainer.optional("the training curves", lambda: plot_training_curves(trainer.run.read_metrics(),
                                                                         trainer.run.path / "curves.png"))
        numbers = {**summary, **(likelihood or {}), **scored}
        trainer.log({"event": "end", "step": trainer.pos.step,
                  **{k: v for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        if trainer.trackers is not None:  # the run's files, beside the numbers
            files = [trainer.run.best_weights_path if trainer.run.best_weights_path.is_file() else trainer.run.weights_path,
                     trainer.run.config_path, trainer.run.summary_path, *sorted(trainer.run.path.glob("sampler-*"))]
            trainer.trackers.log_files(files, "run")
    return summary
