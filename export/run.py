"""``python -m export``: export a checkpoint to every configured format, each followed by a parity check."""

from __future__ import annotations

import logging
import shutil
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from omegaconf import OmegaConf

from evaluation.report import fmt_num, markdown_table, write_csv
from evaluation.run import stored_operating_point
from export.convert import INT8_PRESETS, overflow_fix_candidates, to_onnx, to_openvino, to_tensorrt
from export.parity import check, match_detections, raw_difference
from training.backends.base import is_dynamic_hw
from training.cli import ConfigError, UserError
from training.inference.exported import META, ExportedModel, reference_model
from training.inference.families import Family, input_shape_words, load_family, write_meta
from training.inference.runtimes import (
    OpenVINORunner,
    OrtRunner,
    TensorRTRunner,
    Unavailable,
    cpu_capabilities,
    inference_precision,
)

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino_fp32", "openvino_bf16", "openvino_int8", "tensorrt_fp32", "tensorrt_fp16")


class ParityError(UserError):
    """An exported model disagrees with its PyTorch reference beyond the configured bounds."""


class ParityData:
    """What every format is checked on: N images for box / raw-output parity and the whole validation split
    (detectors: the evaluator's mAP; classifier: accuracy over the validation crops)."""

    def __init__(self, family: Family, cfg):
        p = cfg.parity
        self.family = family
        n_parity, n_calib = int(p.n_images), int(cfg.calibration.n_images)
        if family.is_detector:
            from training.data import load_dataset

            splits = list(dict.fromkeys([str(p.split), str(cfg.calibration.split)]))
            ds = load_dataset(cfg.data, splits)
            self.split = ds[str(p.split)]
            self.images = [im.file for im in self.split.images[:n_parity]]
            self.calibration = [im.file for im in ds[str(cfg.calibration.split)].images[:n_calib]]
            if family.class_names and list(family.class_names) != ds.class_names:
                raise UserError(
                    f"{family.source}: model classes {family.class_names} differ from data '{ds.name}' {ds.class_names}"
                )
        else:
            from training.classifier.crops import build_crop_splits

            crops, _ = build_crop_splits(cfg.crops, cfg.get("data"), family.class_names)
            self.split = crops[str(p.split)]
            self.images = [c.image for c in self.split[:n_parity]]
            self.calibration = [c.image for c in crops[str(cfg.calibration.split)][:n_calib]]
        if not self.images:
            raise UserError(f"parity split '{p.split}' is empty")

    def evaluate(self, model: ExportedModel, eval_cfg) -> dict[str, float]:
        if self.family.is_detector:
            from evaluation.evaluator import evaluate_detector

            result, _ = evaluate_detector(model, self.split, eval_cfg)
            return {k: result.metrics[k] for k in ("mAP50", "mAP50-95", "f1")}
        from evaluation.classification import classification_metrics

        y = np.asarray([c.label for c in self.split])
        pred = model.predict_proba([c.image for c in self.split]).argmax(1)
        m = classification_metrics(y, pred, self.family.class_names)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    def outputs(self, model: ExportedModel) -> tuple[list, list]:
        raw, decoded = [], []
        for im in self.images:
            feeds, ctx = model.feeds(im)
            out = model.runner(feeds)
            raw.append(out)
            decoded.append(self.family.decode(out, ctx))
        return raw, decoded


def _bounds(cfg, fmt: str) -> dict:
    """``parity.bounds.default`` overridden by ``parity.bounds.<fmt>`` (a null bound is not checked)."""
    out: dict = {}
    for key in ("default", fmt):
        node = cfg.parity.bounds.get(key)
        if node is not None:
            out.update(OmegaConf.to_container(node, resolve=True))
    return out


def _build(
    fmt: str, family: Family, out: Path, onnx_path: Path, data: ParityData, cfg, int8_fix: str | None = None
) -> tuple[Path, object]:
    """Write the artifact of ``fmt`` and return it with a runner over it (``int8_fix``: NNCF's overflow fix for
    ``openvino_int8``, resolved; default: ``openvino.int8.overflow_fix`` resolved for this CPU)."""
    threads = cfg.get("threads")
    if fmt == "onnx":
        return onnx_path, OrtRunner(onnx_path, "CPUExecutionProvider", threads)
    if fmt.startswith("openvino"):
        prec = fmt.split("_")[1]
        inference_precision(prec)  # Unavailable before any build: BF16 on a CPU without it
        stored = "int8" if prec == "int8" else "fp32"  # bf16 runs the fp32 model with a runtime hint
        xml = out / f"openvino_{stored}" / "model.xml"
        if not xml.exists():
            xml.parent.mkdir(parents=True, exist_ok=True)
            calib = [family.feeds(im)[0] for im in data.calibration] if stored == "int8" else None
            if stored == "int8" and not calib:
                raise UserError(f"no calibration images in split '{cfg.calibration.split}'")
            int8 = OmegaConf.to_container(cfg.openvino.int8)
            if int8_fix:
                int8["overflow_fix"] = int8_fix
            to_openvino(onnx_path, xml, family, stored, calib, int8)
        u8 = family.graph_preprocessing if cfg.openvino.u8_input else None
        return xml, OpenVINORunner(xml, prec, threads, u8)
    if fmt.startswith("tensorrt"):
        engine = out / f"model_{fmt.split('_')[1]}.engine"
        to_tensorrt(
            onnx_path,
            engine,
            fmt.endswith("fp16"),
            float(cfg.trt_workspace_gb),
            int(cfg.trt_max_batch),
            family.input_hw,
        )
        return engine, TensorRTRunner(engine)
    raise ConfigError(f"unknown export format {fmt!r}; valid: {list(FORMATS)}")


class _Reference(NamedTuple):
    """What every format is compared with: the PyTorch module's raw outputs and boxes on the parity images, and
    its metrics over the parity split (with ``eval_cfg``)."""

    raw: list
    dets: list
    metrics: dict
    eval_cfg: object


def _export_format(
    fmt: str,
    family: Family,
    out: Path,
    onnx_path: Path,
    data: ParityData,
    cfg,
    ref: _Reference,
    int8_fix: tuple[str, str] | None,
) -> tuple[dict, ExportedModel | None]:
    """Build ``fmt`` and check its parity with ``ref``: its manifest entry (``status`` passed / failed /
    unavailable; ``reason`` when not passed) and the model (None when unavailable)."""
    entry = {"format": fmt, "precision": fmt.split("_")[1] if "_" in fmt else "fp32"}
    t0 = time.perf_counter()
    try:
        path, runner = _build(fmt, family, out, onnx_path, data, cfg, int8_fix and int8_fix[0])
    except Unavailable as e:
        log.warning("%s: unavailable here (%s)", fmt, e)
        return {**entry, "status": "unavailable", "reason": str(e)}, None
    entry.update(path=str(path.relative_to(out)), seconds_to_build=round(time.perf_counter() - t0, 2))
    if isinstance(runner, OpenVINORunner):
        entry.update(inference_precision=runner.config["INFERENCE_PRECISION_HINT"], u8_input=runner.u8_input)
    if int8_fix:
        entry.update(overflow_fix=int8_fix[0], overflow_fix_why=int8_fix[1])
    model = ExportedModel(family, runner, str(path), fmt)
    raw, dets = data.outputs(model)
    m = {f"ref/{k}": v for k, v in ref.metrics.items()}
    m.update({f"export/{k}": v for k, v in data.evaluate(model, ref.eval_cfg).items()})
    m["raw_diff"] = raw_difference(ref.raw, raw)
    if family.is_detector:
        m.update(match_detections(ref.dets, dets, float(cfg.parity.score_min), float(cfg.parity.iou)))
    else:
        pairs = list(zip(ref.dets, dets, strict=True))
        m["top1_agreement"] = float(np.mean([r.argmax() == d.argmax() for r, d in pairs]))
        m["max_score_diff"] = float(max(np.abs(r - d).max() for r, d in pairs))
    bounds = _bounds(cfg, fmt)
    problems = check(m, bounds)
    entry.update(parity=m, bounds=bounds, status="failed" if problems else "passed")
    if problems:
        entry["reason"] = "; ".join(problems)
    log.info("%s: %s %s", fmt, entry["status"], entry.get("reason", ""))
    return entry, model


def _checked_config(cfg, out: Path) -> tuple[list[str], list]:
    """The formats to export and the resolved INT8 overflow fixes to try; raises on a bad config or when
    ``out`` already holds an export."""
    # formats=onnx (one, without brackets) arrives as text: one format, not its letters
    formats = [str(cfg.formats)] if isinstance(cfg.formats, str) else [str(f) for f in cfg.formats or []]
    if not formats:
        raise ConfigError(f"formats=[]: name at least one of {list(FORMATS)}")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"formats: unknown {bad}; valid: {list(FORMATS)}")
    imgsz = cfg.get("imgsz")
    if imgsz is not None and (
        isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32
    ):
        raise ConfigError(
            f"imgsz={imgsz!r}: expected a whole multiple of 32 (the detectors' stride), e.g. 640"
        )
    import onnx

    top = onnx.defs.onnx_opset_version()
    opset = cfg.get("opset")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 11 <= opset <= top:
        raise ConfigError(f"opset={opset!r}: expected a whole number in [11, {top}] (this onnx's newest)")
    if str(cfg.openvino.int8.preset) not in INT8_PRESETS:
        raise ConfigError(
            f"openvino.int8.preset={cfg.openvino.int8.preset!r}: valid are {list(INT8_PRESETS)}"
        )
    try:  # resolved once, before any work: what to_openvino applies and the manifest records
        int8_fixes = overflow_fix_candidates(str(cfg.openvino.int8.overflow_fix))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (out / META).exists():
        raise UserError(f"{out} already holds an export ({META}); choose another hydra.run.dir")
    from training.runfiles import refuse_held_run

    refuse_held_run(
        out
    )  # a training run (export its weights into a folder of their own), an audit, a predict run
    return formats, int8_fixes


def _reference(family: Family, on_square: Family, data: ParityData, cfg) -> tuple[_Reference, dict | None]:
    """The PyTorch reference every format is compared with, and (rectangular input) the same model's metrics
    on the square (None otherwise)."""
    eval_cfg = OmegaConf.merge(cfg.evaluation, {"n_bootstrap": 0, "imgsz": family.imgsz})
    torch_ref = reference_model(family)
    ref_raw, ref_dets = data.outputs(torch_ref)
    ref_metrics = data.evaluate(torch_ref, eval_cfg)
    log.info("PyTorch reference: %s", ref_metrics)
    square = None
    if family is not on_square:  # what the rectangular input costs: the same model on the square
        square = {"imgsz": on_square.imgsz, **data.evaluate(reference_model(on_square), eval_cfg)}
        log.info("PyTorch on the square: %s", square)
    return _Reference(ref_raw, ref_dets, ref_metrics, eval_cfg), square


def _export_with_fixes(
    fmt: str, fixes: list, family: Family, out: Path, onnx_path: Path, data: ParityData, cfg, ref: _Reference
) -> tuple[dict, ExportedModel | None]:
    """:func:`_export_format` with each overflow fix in turn until one passes parity (or the last); the entry
    lists the replaced tries under ``overflow_fix_tried``."""
    tried = []  # openvino_int8: the overflow fixes that failed parity before the one kept
    for i, fix in enumerate(fixes):
        entry, model = _export_format(fmt, family, out, onnx_path, data, cfg, ref, fix)
        if entry["status"] != "failed" or i + 1 == len(fixes):
            break
        log.warning(
            "%s with overflow_fix=%s failed parity (%s); quantizing again with the next fix",
            fmt,
            fix[0],
            entry["reason"],
        )
        shutil.rmtree(out / Path(entry.pop("path")).parent)  # the next fix is written in its place
        tried.append({**entry, "status": "replaced"})
    if tried:
        entry["overflow_fix_tried"] = tried
    return entry, model


def _manifest(cfg, artifacts: list[dict], models: dict, data: ParityData, ref: _Reference, square) -> dict:
    """The export's manifest: the artifacts, the reference, the stored operating point and the CPU choice."""
    manifest = {
        "artifacts": artifacts,
        "opset": int(cfg.opset),
        "dynamic": bool(cfg.dynamic),
        "reference": ref.metrics,
        "parity_images": len(data.images),
    }
    if square is not None:
        manifest["reference_square"] = square
    # the page-level operating point the model's run chose on valid travels with the export (predict reads it)
    op = stored_operating_point(Path(str(cfg.checkpoint)))
    if op is not None:
        manifest["operating_point"] = {k: v for k, v in op.items() if k != "from"}
    if cfg.select.enabled:
        conf = float(cfg.evaluation.conf_fixed)
        manifest["cpu_choice"] = choose_cpu_path(artifacts, models, data.images[0], conf, cfg.select)
    return manifest


def _write_parity_report(family: Family, manifest: dict, square, out: Path) -> None:
    """Write parity.md / parity.csv and print the table."""
    rows = parity_rows(family, manifest["artifacts"])
    title = f"# Export parity: {family.source}"
    notes = ""
    if square is not None:
        hw = input_shape_words(family)
        ref_line = _metrics_line(manifest["reference"])
        notes += f"\nRectangular input {hw}: PyTorch {ref_line}; the same model on the square "
        notes += f"{square['imgsz']}: {_metrics_line({k: v for k, v in square.items() if k != 'imgsz'})}.\n"
    if manifest.get("cpu_choice"):
        notes += f"\nCPU path for this machine: **{manifest['cpu_choice']['format']}**, {manifest['cpu_choice']['why']}.\n"
    (out / "parity.md").write_text(markdown_table(rows, f"{title}\n") + notes, encoding="utf-8")
    write_csv(out / "parity.csv", rows)
    print(markdown_table(rows, f"{title} ({family.kind}, imgsz {family.imgsz})\n") + notes)


def export_checkpoint(cfg, out: Path) -> dict:
    """Export ``cfg.checkpoint`` to ``cfg.formats`` in ``out``; returns the manifest. Raises :class:`ParityError`
    (after writing the manifest and moving the failed files to ``out/failed/``) when a format breaks its bounds."""
    formats, int8_fixes = _checked_config(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    dynamic = bool(cfg.dynamic) or is_dynamic_hw(cfg.get("input_hw"))  # anchors from the input's shape
    on_square = load_family(
        str(cfg.checkpoint), cfg.evaluation.decode, str(cfg.backend), cfg.get("imgsz"), dynamic
    )
    family = on_square.with_input_hw(cfg.input_hw) if cfg.get("input_hw") else on_square
    data = ParityData(family, cfg)
    ref, square = _reference(family, on_square, data, cfg)
    onnx_path = to_onnx(family, out / "model.onnx", int(cfg.opset), bool(cfg.dynamic))
    artifacts, failures, models = [], [], {}
    for fmt in formats:
        fixes = int8_fixes if fmt == "openvino_int8" else [None]
        entry, model = _export_with_fixes(fmt, fixes, family, out, onnx_path, data, cfg, ref)
        if model is not None:
            models[fmt] = model
        if entry["status"] == "failed":
            failures.append(f"{fmt}: {entry['reason']}")
        artifacts.append(entry)
    manifest = _manifest(cfg, artifacts, models, data, ref, square)
    write_meta(family, out / META, manifest)
    _write_parity_report(family, manifest, square, out)
    if failures:
        _quarantine(out, artifacts)
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        where = f"details in {out / 'parity.md'}, files moved to {out / 'failed'}"
        raise ParityError(f"export parity failed for {failures[0]}{more}; {where}")
    return manifest


def _metrics_line(m: dict) -> str:
    return ", ".join(f"{k} {fmt_num(v)}" for k, v in m.items())


def choose_cpu_path(artifacts: list[dict], models: dict, page, conf: float, node) -> dict | None:
    """The fastest CPU format of those that passed parity, timed end to end (pre-processing, runtime, decoding
    of the boxes above ``conf``, the evaluation's ``conf_fixed``) on a real page of the parity split, with the
    reason in words: what ``python -m evaluation`` /
    ``evaluation.predict`` run when given the export folder. A short timing (``select.runs``); the full
    protocol is ``python -m export.benchmark``."""
    from evaluation.latency import environment, measure

    timings = {}
    for a in artifacts:
        model = models.get(a["format"])
        if a.get("status") != "passed" or model is None or model.runner.device != "cpu":
            continue
        run = partial(model.predict, [page], conf=conf)
        timings[a["format"]] = measure(run, int(node.warmup), int(node.runs), 0.0)["p50_ms"]
    if not timings:
        return None
    best = min(timings, key=timings.get)
    entry = next(a for a in artifacts if a["format"] == best)
    env = environment()
    why = f"fastest end to end of the formats that passed parity on this CPU ({env['cpu']}, {env['cpu_count']} cores"
    caps = cpu_capabilities()
    why += f"; OpenVINO: {' '.join(caps)})" if caps else ")"
    base = timings.get("onnx")
    if base and best != "onnx":
        why += f": {timings[best]:.1f} ms vs ONNX Runtime FP32 {base:.1f} ms ({base / timings[best]:.2f}x)"
    if entry.get("inference_precision"):
        why += f"; OpenVINO inference precision {entry['inference_precision']}"
        if best == "openvino_int8":
            why += " for the operations NNCF left unquantized"
    choice = {
        "format": best,
        "path": entry["path"],
        "e2e_p50_ms": timings[best],
        "timings_ms": timings,
        "why": why,
    }
    log.info("CPU path for this machine: %s (%s)", best, why)
    return choice


def _quarantine(out: Path, artifacts: list[dict]) -> None:
    """Failed files go to ``failed/`` so that nobody ships them by mistake (the manifest says why)."""
    keep = {a["path"] for a in artifacts if a.get("status") == "passed" and a.get("path")}
    for a in artifacts:
        if a.get("status") != "failed" or a["path"] in keep:
            continue
        src = out / a["path"]
        moved = src.parent if src.suffix == ".xml" else src
        dst = out / "failed" / moved.relative_to(out)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if moved.exists():
            shutil.move(str(moved), str(dst))


def parity_rows(family: Family, artifacts: list[dict]) -> list[dict]:
    keys = ("mAP50", "mAP50-95") if family.is_detector else ("accuracy", "macro_f1")
    rows = []
    # an INT8 quantized again after its first overflow fix failed parity: the replaced try first, then the kept one
    groups = [
        [
            {**t, "format": f"{a['format']} (overflow_fix={t['overflow_fix']})"}
            for t in a.get("overflow_fix_tried", [])
        ]
        + [a]
        for a in artifacts
    ]
    for a in (entry for group in groups for entry in group):
        m = a.get("parity") or {}
        row = {"format": a["format"], "status": a["status"]}
        for k in keys:
            row[f"{k} (PyTorch)"] = fmt_num(m.get(f"ref/{k}"))
            row[f"{k} (export)"] = fmt_num(m.get(f"export/{k}"))
        if family.is_detector:
            row["boxes compared"] = str(int(m["ref_boxes"])) if "ref_boxes" in m else "n/a"
        row["match rate" if family.is_detector else "top-1 agreement"] = fmt_num(
            m.get("match_rate", m.get("top1_agreement"))
        )
        row["max score diff"] = fmt_num(m.get("max_score_diff"))
        row["raw diff (rel.)"] = f"{m['raw_diff']:.2e}" if "raw_diff" in m else "n/a"
        row["note"] = a.get("reason", "")
        rows.append(row)
    return rows
