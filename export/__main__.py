"""``python -m export checkpoint=...``: export to ONNX / OpenVINO / TensorRT with parity checks."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import training  # noqa: F401  (registers the ${asset:} resolver before Hydra composes)
from training.errors import UserError, exit_on_user_error, run_cli


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from export.run import export_checkpoint

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise UserError(
            "checkpoint=PATH is required (a weights/best.pt, or a transformers weights/best folder)"
        )
    out = Path(cfg.paths.get("run_dir") or HydraConfig.get().runtime.output_dir)
    export_checkpoint(cfg, out)


if __name__ == "__main__":
    run_cli(main)
