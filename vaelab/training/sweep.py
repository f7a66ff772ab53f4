"""``vaelab train --sweep section.key=v1,v2,...``: one run per value, every config checked before the first trains."""

from __future__ import annotations

from pathlib import Path

from ..config import Config, apply_overrides, build_config
from ..errors import ConfigError
from ..run import unique_run_dir


def plan_sweep(sweep: str, base: dict, overrides: list[str]) -> tuple[str, list[tuple[str, Config, Path]]]:
    """(key, [(value, config, run folder), ...]) for ``sweep`` = 'section.key=v1,v2,...' over the raw config
    ``base`` with ``overrides``; the folders are runs/<name>-<key>-<value>."""
    if "=" not in sweep:
        raise ConfigError("--sweep takes section.key=v1,v2,... e.g. --sweep model.latent_dim=100,500,1000,2000")
    key, text = sweep.split("=", 1)
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"--sweep {sweep}: no values after '='")
    configs = [build_config(apply_overrides(base, [*overrides, f"{key}={v}"])) for v in values]
    short = key.split(".")[-1]
    return key, [(v, cfg, unique_run_dir(Path("runs") / f"{cfg.name}-{short}-{v}")) for v, cfg in zip(values, configs)]
