"""``python -m export.benchmark export_dir=...``: latency of one exported model on every runtime, per the
latency protocol of evaluation/latency.py, and the upstream "ONNX (CPU) vs TensorRT (GPU)" table.

Rows: PyTorch eager (CPU; CUDA where present), ONNX Runtime (CPU; CUDA EP where present), OpenVINO CPU in each
precision the export holds (BF16 only where the CPU has it), TensorRT FP32 / FP16 (engines of the export, or
built here when CUDA and tensorrt are present). A runtime that cannot run here is a row saying why, never a
number.
"""

from __future__ import annotations

import contextlib
import json
import logging
from functools import cache, partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from evaluation.evaluator import evaluate_detector
from evaluation.latency import benchmark_detector, cpu_peak, environment, protocol
from evaluation.report import markdown_table, write_csv
from training.cli import UserError, cli, first_line, require
from training.data.images import load_rgb
from training.inference.exported import META, ExportedModel, load_meta
from training.inference.families import Family, input_shape_words, load_family
from training.inference.runtimes import (
    OpenVINORunner,
    OrtRunner,
    TensorRTRunner,
    TorchRunner,
    Unavailable,
    cpu_capabilities,
    openvino_core,
)
from training.tracking import tracked
from training.train import run_dir_of

log = logging.getLogger(__name__)

STATS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")


def _rows_to_try(
    out: Path, meta: dict, base: Family, family: Family | None, cfg
) -> list[tuple[str, str, str, object]]:
    """(runtime, device, precision, factory) for every configured row; the factory raises Unavailable.
    ``base``: the export's own model description; ``family``: the source checkpoint's (PyTorch rows)."""
    threads = cfg.get("threads")
    arts = {a["format"]: a for a in meta.get("artifacts", [])}
    onnx = out / "model.onnx"

    def torch_runner(device):
        if family is None:
            raise Unavailable(f"PyTorch: source checkpoint {meta.get('source')} not found")
        return TorchRunner(family, device)

    def ov_runner(fmt, prec):
        a = arts.get(fmt)
        if a is None:
            raise Unavailable(f"no {fmt} in this export (add it to formats= of python -m export)")
        if a.get("status") != "passed":
            raise Unavailable(f"{fmt}: {a.get('status')} ({a.get('reason', '')})")
        u8 = base.graph_preprocessing if a.get("u8_input") else None
        return OpenVINORunner(out / a["path"], prec, threads, u8, profile=bool(cfg.profile))

    def trt_runner(prec):
        engine = out / f"model_{prec}.engine"
        if not engine.exists():
            from export.convert import to_tensorrt

            # raises Unavailable without CUDA / tensorrt
            to_tensorrt(
                onnx,
                engine,
                prec == "fp16",
                float(cfg.trt_workspace_gb),
                int(cfg.trt_max_batch),
                base.input_hw,
            )
        return TensorRTRunner(engine)

    return [
        ("PyTorch eager", "CPU", "fp32", partial(torch_runner, "cpu")),
        ("PyTorch eager", "CUDA", "fp32", partial(torch_runner, "cuda")),
        ("ONNX Runtime", "CPU", "fp32", partial(OrtRunner, onnx, "CPUExecutionProvider", threads)),
        ("ONNX Runtime", "CUDA", "fp32", partial(OrtRunner, onnx, "CUDAExecutionProvider")),
        ("OpenVINO", "CPU", "fp32", partial(ov_runner, "openvino_fp32", "fp32")),
        ("OpenVINO", "CPU", "bf16", partial(ov_runner, "openvino_bf16", "bf16")),
        ("OpenVINO", "CPU", "int8", partial(ov_runner, "openvino_int8", "int8")),
        ("TensorRT", "CUDA", "fp32", partial(trt_runner, "fp32")),
        ("TensorRT", "CUDA", "fp16", partial(trt_runner, "fp16")),
    ]


def _kernel_shares(kernels: dict[str, float]) -> dict[str, float]:
    """Per-layer counter times grouped by the precision in the kernel's name (``..._i8`` / ``_I8`` / ``_u8``:
    int8, ``_bf16``, ``_f32``), as fractions of the total."""
    groups = {"int8": 0.0, "bf16": 0.0, "fp32": 0.0, "other": 0.0}
    for name, ms in kernels.items():
        tail = name.rsplit("_", 1)[-1].lower()
        key = {"i8": "int8", "u8": "int8", "bf16": "bf16", "f32": "fp32"}.get(tail, "other")
        groups[key] += ms
    total = sum(groups.values()) or 1.0
    return {k: v / total for k, v in groups.items()}


def onnx_flops(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> float | None:
    """Operations of one inference (2 per multiply-add) of the convolutions and matrix products of an ONNX
    graph: what the fraction-of-peak column divides by. Shapes from OpenVINO's reading of the graph (static
    after its shape propagation; ONNX's own shape inference loses them after YOLO's Split); ``shapes`` (input
    name -> shape, e.g. the timed page's feeds) fixes the symbolic axes of a dynamic graph first. None without
    openvino, with a shape still dynamic or an unreadable file."""
    try:
        model = openvino_core().read_model(str(path))
        if shapes:
            model.reshape({k: list(v) for k, v in shapes.items()})
    except (Unavailable, RuntimeError) as e:  # a damaged model.onnx: its own row says so
        log.info("no FLOP count for %s (%s)", path, first_line(e))
        return None
    total = 0.0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        out, w = op.get_output_partial_shape(0), op.get_input_partial_shape(1)
        if out.is_dynamic or w.is_dynamic:
            return None
        out, w = [d.get_length() for d in out], [d.get_length() for d in w]
        if kind == "MatMul":
            a = [d.get_length() for d in op.get_input_partial_shape(0)]
            k = a[-2] if op.get_attributes().get("transpose_a") else a[-1]
        else:
            k = float(np.prod(w[1:] if kind == "Convolution" else w[2:]))
        total += 2.0 * float(np.prod(out)) * k
    return total


def _peer_rows(meta: dict, base: Family, cfg, run_dir: Path, page: np.ndarray, dataset) -> list[dict]:
    """ultralytics' own ONNX and OpenVINO INT8 exports through its predictor (``cfg.peers``), same protocol;
    ``dataset()``: the data of the run (the INT8 peer's calibration)."""
    from export.peers import UltralyticsPeer, export_peer
    from training.data.loader import cache_root, prepare_yolo

    rows = []
    for name in [str(p) for p in cfg.peers]:
        row = {"runtime": f"{name.replace('_', ' ', 1)} (its predictor)", "device": "CPU"}
        row["precision"] = "int8" if name.endswith("int8") else "fp32"
        if meta["kind"] != "ultralytics" or not meta.get("source") or not Path(meta["source"]).is_file():
            rows.append({**row, "status": "unavailable", "reason": "peers are for ultralytics checkpoints"})
            continue
        # another library's exporter: its failure is this row's note, not the run's end
        try:
            data_yaml = prepare_yolo(dataset(), cache_root(cfg.data)) if name.endswith("int8") else None
            fixed = base.options.get("input_hw") and not base.dynamic_hw
            size = list(base.input_hw) if fixed else base.imgsz  # the input ours has
            path = export_peer(name, meta["source"], size, data_yaml, run_dir / "peers", base.dynamic_hw)
            model = UltralyticsPeer(path, size, base.class_names)
            model.timing_page = page
        except Exception as e:
            rows.append({**row, "status": "failed", "reason": f"{e.__class__.__name__}: {first_line(e)}"})
            log.warning("%s: failed (%s)", name, e)
            continue
        r = benchmark_detector(model, page, base.imgsz, float(cfg.conf), **protocol(cfg))
        rows.append({**row, "status": "ok", **r, "model_obj": model})
    return rows


def _source_family(meta: dict, base: Family) -> Family | None:
    """The source checkpoint's model description (the PyTorch rows), None when it is missing or unreadable."""
    if meta.get("source") and Path(meta["source"]).exists():
        with contextlib.suppress(UserError):
            options = {meta["kind"]: meta.get("options") or {}}
            return load_family(
                meta["source"], options, meta["kind"], base.imgsz, False, base.options.get("input_hw")
            )
    return None


def _dataset_reader(cfg):
    """A function returning ``cfg.data``, read on the first call only."""

    @cache
    def dataset():
        """``cfg.data``, read once for the accuracy column (val) and the INT8 peer's calibration (train)."""
        from training.data import load_dataset

        int8_peer = any(str(p).endswith("int8") for p in cfg.peers)
        return load_dataset(cfg.data, ["train", "val"] if int8_peer else ["val"])

    return dataset


def _measure_row(row: dict, make, out: Path, base: Family, family: Family | None, page, cfg) -> dict:
    """``row`` (runtime, device, precision) measured with the runner ``make()`` builds, or saying why not."""
    runtime, device = row["runtime"], row["device"]
    what = f"{runtime} {device} {row['precision']}"
    try:
        runner = make()
    except (Unavailable, ImportError) as e:
        log.info("%s: unavailable (%s)", what, e)
        return {**row, "status": "unavailable", "reason": str(e)}
    except UserError as e:  # a damaged artefact: its row says so, the other rows are still measured
        log.warning("%s: failed (%s)", what, e)
        return {**row, "status": "failed", "reason": str(e)}
    model = ExportedModel(family if isinstance(runner, TorchRunner) else base, runner, str(out), runtime)
    model.timing_page = page
    r = benchmark_detector(model, page, base.imgsz, float(cfg.conf), **protocol(cfg))
    r["model_obj"] = model
    if isinstance(runner, OpenVINORunner):
        feeds = model.feeds(page)[0]
        if float(cfg.throughput_seconds) > 0:
            tp = runner.throughput(feeds, float(cfg.throughput_seconds))
            r.update({f"throughput/{k}": v for k, v in tp.items()}, **{"throughput/mode": "async"})
        if cfg.profile:
            r["kernels"] = runner.layer_times(feeds)
            r["kernel_shares"] = _kernel_shares(r["kernels"])
    elif device == "CPU":
        r.update({"throughput/pages_per_s": 1000.0 / r["model/mean_ms"], "throughput/mode": "sync"})
    log.info("%s: model p50 %.2f ms, end-to-end p50 %.2f ms", what, r["model/p50_ms"], r["e2e/p50_ms"])
    return {**row, "status": "ok", **r}


def _peaks_and_accuracy(rows: list[dict], flops, peaks: dict, split, eval_cfg) -> None:
    """Add each measured row's fraction of the CPU's peak and (with ``split``) its val mAP; drops the models."""
    for r in rows:
        model = r.pop("model_obj", None)
        if r["status"] != "ok":
            continue
        peak = peaks[r["precision"]][0] if r["device"] == "CPU" and r["precision"] in peaks else None
        if flops and peak:
            r["peak_fraction"] = flops / (r["model/p50_ms"] / 1000.0) / peak
        if split is not None and model is not None:
            result, _ = evaluate_detector(model, split, eval_cfg)
            r.update({f"val/{k}": float(result.metrics[k]) for k in ("mAP50", "mAP50-95")})


def _latency_note(meta: dict, base: Family, cfg, doc: dict, page: np.ndarray, flops, peaks: dict) -> str:
    """The paragraph above the latency table: model, machine, protocol, and how the % of peak is computed."""
    env, rows, shapes = doc["environment"], doc["rows"], doc["timed_input_shapes"]
    caps = env["openvino_capabilities"]
    hw = input_shape_words(base)
    if base.dynamic_hw:
        timed = "x".join(map(str, next(iter(shapes.values()))[2:]))
        hw += f", timed on a {page.shape[0]}x{page.shape[1]} page: input {timed}"
    note = (
        f"Model: {meta.get('source')} ({meta['kind']}), input {hw}, batch 1; CPU: {env['cpu']} "
        f"({env['cpu_count']} cores); GPU: {env['gpu'] or 'none'}; warm-up {cfg.warmup}, >= {cfg.min_runs} runs "
        f"and >= {cfg.min_seconds} s per row.\n\n"
        f"CPU instruction sets (lscpu flags): {env['cpu_isa'] or 'n/a'}; OpenVINO OPTIMIZATION_CAPABILITIES: "
        f"{' '.join(caps) or 'n/a'}; clock {env['cpu_mhz'] or '?'} MHz"
        + (
            f"; ONEDNN_MAX_CPU_ISA={env['onednn_max_cpu_isa']} (OpenVINO's kernels capped there; ONNX Runtime "
            "and PyTorch ignore it)"
            if env["onednn_max_cpu_isa"]
            else ""
        )
        + ".\n\n"
    )
    if flops:
        note += (
            f"% of peak = {flops / 1e9:.1f} GFLOP (2 x multiply-adds of the ONNX graph's Conv / MatMul / Gemm) "
            "/ model p50 / the CPU's peak in the row's precision: "
            + "; ".join(f"{p} {v / 1e12:.2f} TOPS = {how}" for p, (v, how) in peaks.items() if v)
            + ". INT8 rows divide by the INT8 peak (their convolutions run INT8; NNCF leaves a few ops "
            "in float). Pages/s: OpenVINO rows with the THROUGHPUT hint and async requests (model only); others "
            "1000 / model mean of one synchronous request.\n"
        )
    if any(r.get("peak_fraction", 0) > 1 for r in rows):
        note += (
            "\nA fraction above 100% means the cores ran faster than the clock /proc/cpuinfo reports (turbo, or a "
            "VM reporting its nominal clock): read that column as relative between rows.\n"
        )
    return note


def _kernel_table(rows: list[dict]) -> str:
    """The per-layer-counter section (rows profiled with ``profile=true``), empty when none was."""
    kernels = [r for r in rows if r.get("kernel_shares")]
    if not kernels:
        return ""
    krows = [
        {
            "row": f"{r['runtime']} {r['precision']}",
            **{f"{k} kernels": f"{100 * v:.1f}%" for k, v in r["kernel_shares"].items()},
            "top kernels (ms)": ", ".join(f"{k} {v:.2f}" for k, v in list(r["kernels"].items())[:4]),
        }
        for r in kernels
    ]
    return "\n" + markdown_table(krows, "## Where OpenVINO spends the time (per-layer counters)\n")


def benchmark_export(export_dir: str | Path, cfg, page: np.ndarray | None = None) -> dict:
    """Measure every row; returns ``{"rows": [...], "environment": {...}}`` and writes latency.* in ``out``."""
    out = Path(export_dir)
    if not (out / META).is_file():
        raise UserError(f"{out}: not an export folder (no {META}); run python -m export first")
    meta = load_meta(out / META)
    base = Family.from_meta(meta)
    family = _source_family(meta, base)
    if page is None:  # a blank page of the input size; for a dynamic input an A4 portrait one (h : w = 1.414)
        h, w = base.input_hw
        page = np.full((h, round(w / 2**0.5) if base.dynamic_hw else w, 3), 255, np.uint8)
    timed_feeds = base.feeds(page)[0]  # the input shape every row is timed at
    run_dir = Path(cfg.paths.get("run_dir") or out)
    run_dir.mkdir(parents=True, exist_ok=True)
    dataset = _dataset_reader(cfg)
    split = dataset()["val"] if cfg.accuracy and base.is_detector else None
    rows = [
        _measure_row(
            {"runtime": runtime, "device": device, "precision": prec}, make, out, base, family, page, cfg
        )
        for runtime, device, prec, make in _rows_to_try(out, meta, base, family, cfg)
    ]
    if cfg.peers:
        rows += _peer_rows(meta, base, cfg, run_dir, page, dataset)
    shapes = {k: v.shape for k, v in timed_feeds.items()}
    flops = onnx_flops(out / "model.onnx", shapes) if (out / "model.onnx").is_file() else None
    peaks = {p: cpu_peak(p, threads=cfg.get("threads")) for p in ("fp32", "bf16", "int8")}
    eval_cfg = OmegaConf.merge(cfg.evaluation, {"n_bootstrap": 0, "imgsz": base.imgsz})
    _peaks_and_accuracy(rows, flops, peaks, split, eval_cfg)
    doc = {
        "rows": rows,
        "environment": {**environment(), "openvino_capabilities": cpu_capabilities()},
        "export": str(out),
        "source": meta.get("source"),
        "kind": meta["kind"],
        "imgsz": base.imgsz,
        "input_hw": list(base.input_hw) if not base.dynamic_hw else "dynamic",
        "timed_input_shapes": {k: list(v) for k, v in shapes.items()},
        "gflops": flops / 1e9 if flops else None,
        "peaks": {p: {"ops_per_s": v, "how": how} for p, (v, how) in peaks.items()},
    }
    (run_dir / "latency.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    table = latency_rows(rows)
    write_csv(run_dir / "latency.csv", table)
    up = upstream_rows(rows)
    note = _latency_note(meta, base, cfg, doc, page, flops, peaks)
    md = markdown_table(table, f"# Latency\n\n{note}\n") + "\n"
    md += markdown_table(up, "## ONNX (CPU) vs TensorRT (GPU)\n")
    md += _kernel_table(rows)
    (run_dir / "latency.md").write_text(md, encoding="utf-8")
    write_csv(run_dir / "latency_onnx_vs_tensorrt.csv", up)
    print(md)
    doc["table"], doc["upstream"] = table, up
    return doc


def _ms(r: dict, key: str) -> str:
    return f"{r[key]:.2f}" if r.get("status") == "ok" else ""


def latency_rows(rows: list[dict]) -> list[dict]:
    cols = [(f"{part} {s[:-3]} (ms)", f"{part}/{s}") for part in ("model", "e2e") for s in STATS]
    ort = next((r for r in rows if r["runtime"] == "ONNX Runtime" and r["device"] == "CPU"), {})
    table = []
    for r in rows:
        ok = r.get("status") == "ok"
        row = {k: r[k] for k in ("runtime", "device", "precision")}
        row.update({c: _ms(r, k) for c, k in cols})
        speed = ok and ort.get("status") == "ok" and r["device"] == "CPU"
        row["e2e speed-up vs ORT FP32"] = f"{ort['e2e/p50_ms'] / r['e2e/p50_ms']:.2f}x" if speed else ""
        pages = r.get("throughput/pages_per_s")
        row["pages/s"] = f"{pages:.1f} ({r['throughput/mode']})" if pages else ""
        row["% of peak"] = f"{100 * r['peak_fraction']:.1f}" if "peak_fraction" in r else ""
        row["mAP50 (val)"] = f"{r['val/mAP50']:.4f}" if "val/mAP50" in r else ""
        row["note"] = r.get("reason", "")
        table.append(row)
    return table


def upstream_rows(rows: list[dict]) -> list[dict]:
    """The published table's two rows (ONNX Runtime on CPU, TensorRT on GPU) with their ratio."""
    base = next(r for r in rows if r["runtime"] == "ONNX Runtime" and r["device"] == "CPU")
    trt = [r for r in rows if r["runtime"] == "TensorRT"]
    fp16 = [r for r in trt if r["precision"] == "fp16" and r["status"] == "ok"]
    gpu = (fp16 or [r for r in trt if r["precision"] == "fp32"])[0]
    out = []
    for name, r in (("ONNX Runtime (CPU)", base), ("TensorRT (GPU)", gpu)):
        ok = r["status"] == "ok"
        speed = f"{base['model/p50_ms'] / r['model/p50_ms']:.1f}x" if ok and base["status"] == "ok" else ""
        out.append(
            {
                "runtime": name,
                "precision": r["precision"],
                "inference p50 (ms)": _ms(r, "model/p50_ms"),
                "end-to-end p50 (ms)": _ms(r, "e2e/p50_ms"),
                "speed-up vs ONNX CPU": speed,
                "note": "" if ok else f"unavailable: {r.get('reason', '')}",
            }
        )
    return out


@cli("export_benchmark")
def main(cfg: DictConfig) -> None:
    require(cfg, "export_dir", usage="a folder written by python -m export")
    run_dir = run_dir_of(cfg)
    page = np.asarray(load_rgb(str(cfg.page))) if cfg.get("page") else None
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    with tracked(cfg.get("logger"), run_dir, cfg) as tracker:
        doc = benchmark_export(str(cfg.export_dir), cfg, page)
        tracker.log_rows("latency/all", doc["table"])
        tracker.log_rows("latency/onnx_vs_tensorrt", doc["upstream"])


if __name__ == "__main__":
    main()
