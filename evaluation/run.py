"""Evaluate a detector on configured splits and write the run's artefacts (used by both entry points)."""

from __future__ import annotations

import functools
import json
import logging
import platform
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evaluation import error_analysis, leakage
from evaluation.evaluator import evaluate_detector
from evaluation.pages import operating_point, page_metrics, page_truth
from evaluation.report import markdown_table, plot_curves, plot_pages, write_metrics_json, write_tables
from training.backends import get_backend
from training.backends.base import Detector, Predictor
from training.cli import ConfigError, DataError, UserError, first_line
from training.data import cache_root, load_dataset, prepare_yolo

log = logging.getLogger(__name__)


def load_model(
    checkpoint,
    backend: str,
    decode_table,
    precision: str | None = None,
    run_dir: Path | str = ".",
    device: str | None = None,
):
    """A checkpoint through ``backend`` (``training.backends.BACKENDS``), or an exported detector (.onnx / .xml /
    .engine written by ``python -m export``) through its runtime with the family's shared pre/post-processing.

    ``decode_table``: conf/decode/default.yaml (NMS IoU and max detections per backend); an export decodes as
    its ``sigdet_export.json`` recorded. ``precision``: OpenVINO only, the inference hint of an FP32 IR.
    ``device``: where a checkpoint runs (``cpu``, ``cuda``, ``cuda:1``; None: the backend's choice); an export
    runs where its runtime does.
    """
    from training.inference.exported import is_exported, load_exported

    if is_exported(str(checkpoint)):
        model = load_exported(str(checkpoint), precision)
        if not model.family.is_detector:
            raise UserError(f"{checkpoint}: a classifier export; evaluate it with python -m export (parity)")
        return model
    be = get_backend(str(backend))
    return be.from_checkpoint(str(checkpoint), decode_table[be.name], device=device, run_dir=run_dir)


def check_evaluation_config(cfg: DictConfig) -> None:
    """The values of ``cfg.evaluation`` its schema cannot bound, as one line before any work (train checks them
    before training, not after): splits named and among the data's, confidences in [0, 1], a bootstrap count of
    0 or more, a page recall target in (0, 1]."""
    ev = cfg.evaluation
    splits = [str(s) for s in ev.splits]
    if not splits or len(set(splits)) != len(splits):
        raise ConfigError(f"evaluation.splits={splits}: name each split once, e.g. [val,test]")
    known = list(cfg.data.splits) if "data" in cfg and cfg.data.get("splits") else []
    bad = [s for s in splits if known and s not in known]
    if bad:
        raise ConfigError(f"evaluation.splits: {bad} not a split of the data; its splits are {known}")
    for key in ("conf_fixed", "conf_min"):
        if key in ev and not 0.0 <= float(ev[key]) <= 1.0:
            raise ConfigError(f"evaluation.{key}={ev[key]}: expected a confidence in [0, 1]")
    if int(ev.n_bootstrap) < 0:
        raise ConfigError(f"evaluation.n_bootstrap={ev.n_bootstrap}: expected 0 (no intervals) or more")
    page = ev.get("page")
    if page is not None and not 0.0 < float(page.target_recall) <= 1.0:
        raise ConfigError(f"evaluation.page.target_recall={page.target_recall}: expected a recall in (0, 1]")


def _op_from(path: Path, entry) -> dict | None:
    """An ``operating_point`` entry of a file from others, checked: None when absent, one line when malformed."""
    if entry is None:
        return None
    conf = entry.get("conf") if isinstance(entry, dict) else None
    if conf is None and isinstance(entry, dict) and "conf" in entry:
        return None  # recorded, but no confidence could be chosen (no valid pages with boxes)
    if isinstance(conf, bool) or not isinstance(conf, int | float) or not 0.0 < float(conf) <= 1.0:
        raise DataError(f"{path}: operating_point.conf {conf!r} is not a confidence in (0, 1]")
    return dict(entry) | {"conf": float(conf), "from": str(path)}


def json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, bad UTF-8, huge ints
        raise DataError(f"{path}: unreadable JSON ({e.__class__.__name__}: {first_line(e)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def stored_operating_point(checkpoint: Path) -> dict | None:
    """The page-level operating point stored with a model: its sidecar ``<name>.json`` (the shipped model), its
    run's ``metrics.json`` (``weights/best.pt`` -> the run folder), or an export manifest's copy of it."""
    from training.inference.exported import META, is_exported

    checkpoint = Path(checkpoint)
    if is_exported(checkpoint):
        folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
        for d in (folder, folder.parent):
            if (d / META).is_file():
                return _op_from(d / META, json_object(d / META).get("operating_point"))
        return None
    # the run's metrics.json chose its point for weights/best (.pt or the transformers folder), not for last
    run_metrics = [checkpoint.parent.parent / "metrics.json"] if checkpoint.stem == "best" else []
    for cand in (checkpoint.with_suffix(".json"), *run_metrics):
        if cand.is_file() and cand != checkpoint:
            op = _op_from(cand, json_object(cand).get("operating_point"))
            if op is not None:
                return op
    return None


def provenance(cfg, detector: Predictor) -> dict:
    import torch

    device = str(detector.device)
    hardware = platform.processor() or platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        hardware += (
            f" + {torch.cuda.get_device_name(torch.device(device))}"  # the table's numbers came from it
        )
    return {
        "data": str(cfg.data.get("name")),
        "checkpoint": str(detector.checkpoint) if detector.checkpoint else None,
        "model": str(cfg.model.get("name")) if cfg.get("model") else None,
        "hardware": hardware,
        "device": device,
        "torch": torch.__version__,
    }


def validator(eval_cfg):
    """``(detector, split) -> metrics`` for periodic validation: the full metric set, no bootstrap."""

    cfg = dict(OmegaConf.to_container(eval_cfg, resolve=True), n_bootstrap=0)

    def validate(detector: Detector, split) -> dict[str, float]:
        result, _ = evaluate_detector(detector, split, cfg)
        return {k: v for k, v in result.metrics.items() if k in VALIDATION_KEYS}

    return validate


VALIDATION_KEYS = ("mAP50", "mAP50-95", "precision", "recall", "f1", "conf_at_max_f1", "AR100")


def page_decisions(truth: dict, ev, metrics: dict[str, float], stored: dict | None = None) -> dict | None:
    """Page-level "signed?" metrics of every split into ``metrics``; the operating point they are taken at.

    The operating point (the confidence reaching ``ev.page.target_recall`` of the signed pages) is chosen on the
    split ``ev.page.choose_on`` (valid) when it was evaluated; every split is then scored at it. Without that split
    the model's ``stored`` operating point (chosen on its own valid pages) is used and kept, else ``ev.conf_fixed``.
    """
    on = str(ev.page.choose_on)
    op = None
    if on in truth:
        op = operating_point(*truth[on], float(ev.page.target_recall), on)
    elif stored is not None:
        op = {k: v for k, v in stored.items() if k != "from"} | {"stored_in": stored["from"]}
    conf = op["conf"] if op and op["conf"] is not None else float(ev.conf_fixed)
    for split, (signed, best) in truth.items():
        pm = page_metrics(signed, best, conf, int(ev.n_bootstrap), int(ev.seed))
        metrics.update({f"{split}/{k}": v for k, v in pm.items()})
    if op and on in truth:
        metrics[f"{on}/page/conf_at_target_recall"] = float("nan") if op["conf"] is None else op["conf"]
    return op


def _log_split(tracker, split: str, first: bool, data, preds, ea: dict, png, detector: Predictor, ev) -> None:
    """One evaluated split in the tracker: sample predictions (the first split only), the worst pages, AP by
    bin and the error gallery."""
    if first:
        tracker.log_predictions(
            f"{split}/predictions",
            data,
            preds,
            detector.class_names,
            int(ev.n_log_images),
            float(ev.conf_fixed),
        )
    tracker.log_rows(f"{split}/worst_pages", ea["worst_pages"])
    tracker.log_rows(
        f"{split}/ap_by_bin",
        [r | {"by": g, "range": str(r["range"])} for g in ("area", "aspect") for r in ea[f"by_{g}"]],
    )
    if png:
        tracker.log_images(f"{split}/errors", [png])


def evaluate_run(
    detector: Predictor, cfg, run_dir: Path, tracker=None, prior: dict[str, float] | None = None
) -> dict[str, float]:
    """Evaluate on ``cfg.evaluation.splits``; write metrics.json, metrics.md/.csv and plots into ``run_dir``.

    ``prior`` (e.g. training metrics) is merged into metrics.json. Returns all metrics.
    """
    ev = cfg.evaluation
    splits = list(ev.splits)
    # near-copies of train pages are looked for in train, read for it when it is not evaluated
    near_train = ["train"] if ev.exclude_near_duplicates and "train" not in splits else []
    dataset = load_dataset(cfg.data, near_train + splits)
    if detector.class_names and list(detector.class_names) != dataset.class_names:
        raise UserError(
            f"{detector.checkpoint}: model classes {list(detector.class_names)} differ from the classes of data "
            f"'{dataset.name}' {dataset.class_names}"
        )
    metrics: dict[str, float] = dict(prior or {})
    analyses, sections = {}, []
    metrics.update(dataset.skipped_metrics())
    near = leakage.near_copies_of_train(dataset, splits, cfg.data) if ev.exclude_near_duplicates else {}
    # the YOLO copy of the data, built once and only for a library's own metrics (ultralytics' val)
    yolo_data = functools.cache(lambda: prepare_yolo(dataset, cache_root(cfg.data)))
    truth = {}
    for split in splits:
        result, preds = evaluate_detector(detector, dataset[split], ev)
        metrics.update({f"{split}/{k}": v for k, v in result.metrics.items()})
        if split in near:  # the same predictions scored again without the split's near-copies of train pages
            metrics.update(leakage.dedup_metrics(split, dataset[split], preds, near[split], ev))
        truth[split] = page_truth(dataset[split], preds)
        plot_curves(run_dir, split, result.curves, metrics)
        plot_pages(run_dir, split, dataset[split], preds, metrics, int(ev.n_page_figures))
        ea = analyses[split] = error_analysis.analyse(
            dataset[split], preds, result.metrics["conf_at_max_f1"], ev.errors
        )
        metrics.update({f"{split}/{k}": v for k, v in error_analysis.flat_metrics(ea).items()})
        png = error_analysis.gallery(run_dir / f"errors_{split}.png", dataset[split], preds, ea)
        sections.append(error_analysis.markdown(split, ea, png.name if png else None))
        if ev.ultralytics_metrics and isinstance(detector, Detector):
            # Reported beside ours, never mixed: the two implementations differ by a few points.
            metrics.update(detector.library_metrics(split, ev.imgsz, yolo_data))
        if tracker is not None:
            _log_split(tracker, split, split == splits[0], dataset[split], preds, ea, png, detector, ev)
    # the model's own operating point matters only when this evaluation cannot choose one (no valid split)
    needs_stored = str(ev.page.choose_on) not in truth and detector.checkpoint
    stored = stored_operating_point(detector.checkpoint) if needs_stored else None
    op = page_decisions(truth, ev, metrics, stored)
    # the files actually read, not only the config's name ("yolo-folder" names no folder)
    prov = provenance(cfg, detector) | {"data_sources": {s: dataset[s].source for s in splits}}
    note = "Data: {data} ({sources}); model: {model}; checkpoint: {checkpoint}; hardware: {hardware} ({device}); torch {torch}.".format(
        **prov, sources=", ".join(f"{s}: {src}" for s, src in prov["data_sources"].items())
    )
    extra = {"provenance": prov, "errors": analyses} | ({"operating_point": op} if op else {})
    if near:
        extra["near_duplicates_of_train"] = {s: v["pairs"] for s, v in near.items()}
        sections.insert(0, leakage.dedup_markdown(metrics, splits))
    write_metrics_json(run_dir, metrics, extra)
    md, rows = write_tables(run_dir, metrics, splits, note)
    with open(md, "a", encoding="utf-8") as f:
        f.write("\n" + "\n".join(sections))
    if tracker is not None:
        tracker.log_summary(metrics)
        tracker.log_rows("metrics", rows)
    print(markdown_table(rows, note))
    log.info("wrote %s", md)
    return metrics
