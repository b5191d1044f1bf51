"""``python -m export.benchmark export_dir=...``: latency of one exported model on every runtime, per the
DESIGN.md protocol, and the upstream "ONNX (CPU) vs TensorRT (GPU)" table.

Rows: PyTorch eager (CPU; CUDA where present), ONNX Runtime (CPU; CUDA EP where present), OpenVINO CPU in each
precision the export holds (BF16 only where the CPU has it), TensorRT FP32 / FP16 (engines of the export, or
built here when CUDA and tensorrt are present). A runtime that cannot run here is a row saying why, never a
number.
"""

from __future__ import annotations

import contextlib
import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, open_dict

from evaluation.latency import benchmark_detector, environment, protocol
from evaluation.report import markdown_table, write_csv
from export.families import Family, load_family
from export.model import META, ExportedModel, load_meta
from export.runtimes import OpenVINORunner, OrtRunner, TensorRTRunner, TorchRunner, Unavailable
from training.data.images import load_rgb
from training.errors import UserError, cli, require
from training.tracking import tracked
from training.train import run_dir_of

log = logging.getLogger(__name__)

STATS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")


def _rows_to_try(out: Path, meta: dict, family: Family | None, cfg) -> list[tuple[str, str, str, object]]:
    """(runtime, device, precision, factory) for every configured row; the factory raises Unavailable."""
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
        return OpenVINORunner(out / a["path"], prec, threads)

    def trt_runner(prec):
        engine = out / f"model_{prec}.engine"
        if not engine.exists():
            from export.convert import to_tensorrt

            # raises Unavailable without CUDA / tensorrt
            to_tensorrt(onnx, engine, prec == "fp16", float(cfg.trt_workspace_gb), int(cfg.trt_max_batch))
        return TensorRTRunner(engine)

    return [
        ("PyTorch eager", "CPU", "fp32", partial(torch_runner, "cpu")),
        ("PyTorch eager", "CUDA", "fp32", partial(torch_runner, "cuda")),
        ("ONNX Runtime", "CPU", "fp32", partial(OrtRunner, onnx, "CPUExecutionProvider", threads)),
        ("ONNX Runtime", "CUDA", "fp32", partial(OrtRunner, onnx, "CUDAExecutionProvider")),
        ("OpenVINO", "CPU", "fp32", partial(ov_runner, "openvino_fp32", "fp32")),
        ("OpenVINO", "CPU", "bf16", partial(ov_runner, "openvino_bf16", "bf16")),
        ("OpenVINO", "CPU", "int8", partial(ov_runner, "openvino_int8", "fp32")),
        ("TensorRT", "CUDA", "fp32", partial(trt_runner, "fp32")),
        ("TensorRT", "CUDA", "fp16", partial(trt_runner, "fp16")),
    ]


def benchmark_export(export_dir: str | Path, cfg, page: np.ndarray | None = None) -> dict:
    """Measure every row; returns ``{"rows": [...], "environment": {...}}`` and writes latency.* in ``out``."""
    out = Path(export_dir)
    if not (out / META).is_file():
        raise UserError(f"{out}: not an export folder (no {META}); run python -m export first")
    meta = load_meta(out / META)
    base = Family.from_meta(meta)
    family = None
    if Path(meta["source"]).exists():
        with contextlib.suppress(UserError):
            family = load_family(meta["source"], {meta["kind"]: meta["options"]}, meta["kind"], base.imgsz)
    if page is None:
        page = np.full((base.imgsz, base.imgsz, 3), 255, np.uint8)
    rows = []
    for runtime, device, prec, make in _rows_to_try(out, meta, family, cfg):
        row = {"runtime": runtime, "device": device, "precision": prec}
        what = f"{runtime} {device} {prec}"
        try:
            runner = make()
        except (Unavailable, ImportError) as e:
            rows.append({**row, "status": "unavailable", "reason": str(e)})
            log.info("%s: unavailable (%s)", what, e)
            continue
        except UserError as e:  # a damaged artefact: its row says so, the other rows are still measured
            rows.append({**row, "status": "failed", "reason": str(e)})
            log.warning("%s: failed (%s)", what, e)
            continue
        model = ExportedModel(family if isinstance(runner, TorchRunner) else base, runner, str(out), runtime)
        r = benchmark_detector(model, page, base.imgsz, float(cfg.conf), **protocol(cfg))
        rows.append({**row, "status": "ok", **r})
        log.info("%s: model p50 %.2f ms, end-to-end p50 %.2f ms", what, r["model/p50_ms"], r["e2e/p50_ms"])
    env = environment()
    doc = {
        "rows": rows,
        "environment": env,
        "export": str(out),
        "source": meta.get("source"),
        "kind": meta["kind"],
        "imgsz": base.imgsz,
    }
    run_dir = Path(cfg.paths.get("run_dir") or out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "latency.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    table = latency_rows(rows)
    write_csv(run_dir / "latency.csv", table)
    up = upstream_rows(rows)
    note = (
        f"Model: {meta.get('source')} ({meta['kind']}), input {base.imgsz}x{base.imgsz}, batch 1; CPU: {env['cpu']} "
        f"({env['cpu_count']} cores); GPU: {env['gpu'] or 'none'}; warm-up {cfg.warmup}, >= {cfg.min_runs} runs "
        f"and >= {cfg.min_seconds} s per row."
    )
    md = markdown_table(table, f"# Latency\n\n{note}\n") + "\n"
    md += markdown_table(up, "## ONNX (CPU) vs TensorRT (GPU)\n")
    (run_dir / "latency.md").write_text(md, encoding="utf-8")
    write_csv(run_dir / "latency_onnx_vs_tensorrt.csv", up)
    print(md)
    doc["table"], doc["upstream"] = table, up
    return doc


def _ms(r: dict, key: str) -> str:
    return f"{r[key]:.2f}" if r.get("status") == "ok" else ""


def latency_rows(rows: list[dict]) -> list[dict]:
    cols = [(f"{part} {s[:-3]} (ms)", f"{part}/{s}") for part in ("model", "e2e") for s in STATS]
    table = []
    for r in rows:
        row = {k: r[k] for k in ("runtime", "device", "precision")}
        table.append({**row, **{c: _ms(r, k) for c, k in cols}, "note": r.get("reason", "")})
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
