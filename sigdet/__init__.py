"""sigdet: find handwritten signatures in document images and PDFs, and train, evaluate and export detectors.

    import sigdet

    det = sigdet.load()                       # the real-page detector shipped in the package
    for page in det.predict("contracts/"):    # images, PDFs, folders, globs, PIL images or arrays
        print(page.file, page.page, page.signed, page.boxes)

    run = sigdet.train(["experiment=quickstart"])        # the same Hydra configs as `sigdet train`
    print(run.dir, run.metrics["test/mAP50"])

A thin facade over ``training`` / ``evaluation`` / ``export``: every function here composes the config its command
composes (``conf/<command>.yaml`` with the overrides given as a list) and calls the function the command calls, so
the API and the CLI give the same results. Mistakes in the input raise :class:`UserError` (one line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evaluation.predict import PageResult, Predictor, SkippedFilesWarning
from training.cli import ConfigError, DataError, UserError, compose

__all__ = [
    "ConfigError",
    "DataError",
    "PageResult",
    "Predictor",
    "Run",
    "SkippedFilesWarning",
    "UserError",
    "evaluate",
    "export",
    "load",
    "predict",
    "run",
    "train",
]
__version__ = "0.1.0"


@dataclass(frozen=True)
class Run:
    """A finished run: its folder and its metrics (the ``metrics`` of its metrics.json)."""

    dir: Path
    metrics: dict


def _set(cfg, values: dict) -> None:
    """Python values onto a composed config (paths with spaces, commas or ``=`` need no override quoting)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for key, value in values.items():
        try:
            OmegaConf.update(cfg, key, str(value) if isinstance(value, Path) else value, merge=False)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}={value!r}: {str(e).splitlines()[0]}") from None


def load(
    checkpoint: str | Path | None = None,
    *,
    device: str | None = None,
    conf: float | None = None,
    overrides: list[str] | tuple = (),
) -> Predictor:
    """A detector ready to :meth:`~evaluation.predict.Predictor.predict`: the shipped real-page model when
    ``checkpoint`` is None, else a run folder, a checkpoint or an export (file or folder).

    ``device``: ``cpu``, ``cuda``, ``cuda:1`` (None: CUDA when there is one). ``conf``: the operating confidence
    (None: the model's stored operating point). ``overrides``: any other key of conf/predict.yaml, as on the
    command line (``["pdf.dpi=200", "batch=4"]``).
    """
    cfg = compose("predict", overrides, run_dir=".")
    given = {"checkpoint": checkpoint, "device": device, "conf": conf}
    _set(
        cfg, {k: v for k, v in given.items() if v is not None}
    )  # None: the config's (or the overrides') value
    return Predictor.from_config(cfg)


def predict(source, checkpoint: str | Path | None = None, overrides: list[str] | tuple = (), **kw) -> Run:
    """``sigdet predict``: a run folder with pages.jsonl, documents.csv, predictions.json and summary.json for
    ``source`` (a path, folder, glob or PDF, or a list of them); ``overrides`` as on the command line."""
    from evaluation.predict import PAGES, run_predict

    items = list(source) if isinstance(source, list | tuple) else [source]
    if not all(isinstance(s, str | os.PathLike) for s in items):
        raise UserError(
            "sigdet.predict: source must be paths (it writes a run folder); for PIL images or arrays use "
            "sigdet.load().predict(images)"
        )
    cfg = compose("predict", overrides, run_dir=kw.pop("run_dir", None))
    _set(cfg, {"source": [str(s) for s in source] if isinstance(source, list | tuple) else str(source)})
    if checkpoint is not None:
        _set(cfg, {"checkpoint": checkpoint})
    _set(cfg, kw)
    run_dir, summary = run_predict(cfg)
    return Run(run_dir, summary | {"pages": str(run_dir / PAGES)})


def _metrics_of(run_dir: Path) -> dict:
    import json

    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8"))["metrics"] if path.is_file() else {}


def train(overrides: list[str] | tuple = (), run_dir: str | Path | None = None) -> Run:
    """``sigdet train``: train and evaluate the model ``overrides`` configure (``["experiment=quickstart"]``);
    the run folder (``run_dir``, else where the command would write) and its metrics."""
    from training.__main__ import train_and_evaluate

    cfg = compose("train", overrides, run_dir)
    metrics = train_and_evaluate(cfg)
    return Run(Path(cfg.paths.run_dir), metrics or _metrics_of(Path(cfg.paths.run_dir)))


def evaluate(
    checkpoint: str | Path, overrides: list[str] | tuple = (), run_dir: str | Path | None = None
) -> Run:
    """``sigdet evaluate``: ``checkpoint`` (a checkpoint or an export) on the configured data and splits."""
    from evaluation.__main__ import evaluate_checkpoint

    cfg = compose("evaluate", overrides, run_dir)
    _set(cfg, {"checkpoint": checkpoint})
    metrics = evaluate_checkpoint(cfg)
    return Run(Path(cfg.paths.run_dir), metrics)


def export(
    checkpoint: str | Path, overrides: list[str] | tuple = (), run_dir: str | Path | None = None
) -> Run:
    """``sigdet export``: ONNX / OpenVINO / TensorRT files of ``checkpoint`` with their parity checks; the export
    folder and its manifest."""
    from export.run import export_checkpoint

    cfg = compose("export", overrides, run_dir)
    _set(cfg, {"checkpoint": checkpoint})
    out = Path(cfg.paths.run_dir)
    manifest = export_checkpoint(cfg, out)
    return Run(out, manifest)


def run(command: str, *overrides: str) -> None:
    """Any command in this process, exactly as ``sigdet <command> <overrides>`` runs it (the same Hydra app, its run
    folder, its output on the console), e.g. ``sigdet.run("select", "preset=cpu_tiny", "data=embedded")``.
    ``command`` is a ``sigdet`` command name or its ``python -m`` module (``evaluation.model_selection``). A mistake
    raises :class:`UserError` instead of exiting. Returns nothing (Hydra's app does not pass its task's value on):
    read the run folder the command wrote, as on the command line."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from sigdet.cli import COMMANDS, entry_point
    from training.cli import IN_PROCESS

    modules = {m: name for name, (m, _) in COMMANDS.items()}
    name = modules.get(command.removesuffix(".__main__"), command)
    if name not in COMMANDS:
        raise UserError(f"unknown command {command!r}; valid: {sorted(COMMANDS)}")
    entry = entry_point(COMMANDS[name][0])
    argv, token = sys.argv, IN_PROCESS.set(True)
    sys.argv = [f"sigdet {name}", *map(str, overrides)]
    print("$ sigdet", name, *overrides)
    try:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        entry.main()
    finally:
        sys.argv = argv
        IN_PROCESS.reset(token)
