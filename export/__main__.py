"""``python -m export checkpoint=...``: export to ONNX / OpenVINO / TensorRT with parity checks."""

from __future__ import annotations

from omegaconf import DictConfig

from training.cli import cli, require
from training.train import run_dir_of


@cli("export")
def main(cfg: DictConfig) -> None:
    from export.run import export_checkpoint

    require(cfg, "checkpoint", usage="a weights/best.pt, or a transformers weights/best folder")
    export_checkpoint(cfg, run_dir_of(cfg))


if __name__ == "__main__":
    main()
