"""The GPU-VM check: the paths users run on a GPU, each as its own command, time-boxed, in one Markdown report.

    bash scripts/gpu_check.sh --out DIR [--wheels DIR]     # installs the carried wheels, then runs this
    python scripts/gpu_check.py --out DIR [--dry-run]

Every step runs the project's own command (``python -m ...`` from the repository root, or the Python API) in a
fresh process with a time limit; a step that fails is reported with the first line of its error and the next one
runs anyway. Without CUDA (``--dry-run``, or a CPU machine) every CUDA step is reported as "no CUDA" and only the
machine facts are gathered, so the script itself is exercised by the slow tests. Writes ``DIR/gpu_check.md`` (device,
driver, versions, a row per step, each failure's first line) and ``DIR/gpu_check.json``; the runs' own folders go
to a scratch folder, not DIR (DIR stays a few small files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "training" / "assets" / "signatures-xc8up-mini"
# evaluated on CPU and on CUDA, the same checkpoint's mAP50 may differ by this much (kernels round differently)
MAP_TOLERANCE = 0.01
TINY_EVAL = ["evaluation.n_bootstrap=50", "evaluation.ultralytics_metrics=false", "evaluation.n_log_images=0"]


@dataclass
class Step:
    name: str
    what: str
    status: str = "not run"  # passed | failed | no CUDA | skipped | timed out
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    error: str = ""


def first_error_line(text: str) -> str:
    """The line a reader needs: the last ``error:`` / exception line of a command's output."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or (": " in ln and ln.split(":", 1)[0].endswith(("Error", "Exception"))):
            return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


class Check:
    def __init__(self, out: Path, scratch: Path, cuda: bool, budget_s: float):
        self.out, self.scratch, self.cuda = out, scratch, cuda
        self.steps: list[Step] = []
        self.deadline = time.monotonic() + budget_s
        self.env = {
            **os.environ,
            "YOLO_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "CI": "true",
            "PYTHONUNBUFFERED": "1",
        }
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))
        self.env.setdefault("YOLO_CONFIG_DIR", str(scratch / "ultralytics"))

    def run(
        self, step: Step, cmds: list[list[str]], limit_s: float, needs_cuda: bool = True, env=None
    ) -> str:
        """Run ``cmds`` in order for ``step`` (stopping at the first failure); their output, for the figures."""
        self.steps.append(step)
        if needs_cuda and not self.cuda:
            step.status = "no CUDA"
            return ""
        left = self.deadline - time.monotonic()
        if left < 10:
            step.status, step.error = "skipped", "the check's time budget ran out before this step"
            return ""
        t0, text = time.monotonic(), ""
        for cmd in cmds:
            try:
                r = subprocess.run(
                    cmd,
                    cwd=ROOT,
                    env=env or self.env,
                    capture_output=True,
                    text=True,
                    timeout=min(limit_s, left),
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired as e:
                step.status, step.seconds = "timed out", time.monotonic() - t0
                step.error = f"`{' '.join(cmd[:4])} ...` ran past {min(limit_s, left):.0f} s"
                out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                (self.scratch / f"{step.name}.log").write_text(out)
                return out
            text += r.stdout + r.stderr
            if r.returncode != 0:
                step.status, step.seconds = "failed", time.monotonic() - t0
                step.error = f"exit {r.returncode}: {first_error_line(r.stdout + r.stderr)}"
                (self.scratch / f"{step.name}.log").write_text(text)
                return text
        step.status, step.seconds = "passed", time.monotonic() - t0
        return text

    def py(self, *args: str) -> list[str]:
        return [sys.executable, *args]


def metrics_of(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text())["metrics"] if path.is_file() else {}


def machine_facts() -> dict:
    facts = {"python": platform.python_version(), "host": platform.node(), "cpu_count": os.cpu_count()}
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        facts["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            facts |= {
                "gpu": p.name,
                "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(),
            }
    except Exception as e:  # a broken torch install is itself the finding
        facts["torch_error"] = first_error_line(str(e))
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        facts["nvidia_smi"] = (r.stdout or r.stderr).strip()
    for name in (
        "ultralytics",
        "transformers",
        "accelerate",
        "onnxruntime",
        "onnx",
        "hydra",
        "pycocotools",
        "optuna",
        "albumentations",
        "pypdfium2",
        "openvino",
        "tensorrt",
    ):
        try:
            mod = __import__(name)
            facts[f"v_{name}"] = getattr(mod, "__version__", "installed")
        except Exception as e:
            facts[f"v_{name}"] = f"missing ({e.__class__.__name__})"
    try:
        import onnxruntime

        facts["ort_providers"] = onnxruntime.get_available_providers()
    except Exception:
        facts["ort_providers"] = []
    facts["commit"] = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    return facts


PARITY = r"""
import json, sys
import numpy as np
import sigdet
pages = sorted(__import__("pathlib").Path(sys.argv[2]).glob("*.jpg"))
cpu = sigdet.load(sys.argv[1], device="cpu", conf=0.05).predict(pages)
gpu = sigdet.load(sys.argv[1], device=sys.argv[3], conf=0.05).predict(pages)
n = sum(len(a.scores) for a in cpu)
same = sum(len(a.scores) == len(b.scores) for a, b in zip(cpu, gpu))
diffs = [float(np.abs(a.boxes - b.boxes).max()) for a, b in zip(cpu, gpu) if len(a.scores) == len(b.scores) and len(a.scores)]
sdiff = [float(np.abs(a.scores - b.scores).max()) for a, b in zip(cpu, gpu) if len(a.scores) == len(b.scores) and len(a.scores)]
print(json.dumps({"pages": len(pages), "boxes_cpu": n, "pages_same_count": same,
                  "max_box_diff_px": max(diffs or [0.0]), "max_score_diff": max(sdiff or [0.0])}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--dry-run", action="store_true", help="report every CUDA step as 'no CUDA' (a CPU machine)"
    )
    ap.add_argument("--budget", type=float, default=420, help="seconds for all steps together")
    ap.add_argument(
        "--rehearse",
        action="store_true",
        help="run every step on the CPU instead (device cpu, no AMP): checks the commands before GPU time is spent",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    facts = machine_facts()
    cuda = (bool(facts.get("cuda_available")) or args.rehearse) and not args.dry_run
    # where the CUDA steps run: the first GPU, or the CPU in a rehearsal
    dev, gpu_dev, amp = ("cpu", "cpu", "false") if args.rehearse else ("0", "cuda", "true")
    scratch = Path(tempfile.mkdtemp(prefix="sigdet-gpu-check-"))
    c = Check(args.out, scratch, cuda, args.budget)
    runs = scratch / "runs"
    py = c.py

    # 1. ultralytics on CUDA with AMP: YOLOv8n (the shipped synthetic start) and YOLOv8s (random init), evaluated
    yolo = runs / "yolov8n"
    s = Step("yolo_amp", "YOLOv8n / YOLOv8s, 3 epochs on the embedded pages, AMP on CUDA, shared evaluator")
    c.run(
        s,
        [
            py(
                "-m",
                "training",
                "experiment=quickstart",
                f"train.device={dev}",
                f"train.amp={amp}",
                "train.epochs=3",
                "train.plots=false",
                "train.workers=2",
                "evaluation.splits=[val]",
                *TINY_EVAL,
                f"hydra.run.dir={yolo}",
            ),
            py(
                "-m",
                "training",
                "experiment=quickstart",
                "model=yolov8s",
                "model.weights=null",
                f"train.device={dev}",
                f"train.amp={amp}",
                "train.epochs=2",
                "train.plots=false",
                "train.workers=2",
                "evaluation.splits=[val]",
                *TINY_EVAL,
                f"hydra.run.dir={runs / 'yolov8s'}",
            ),
        ],
        240,
    )
    for name in ("yolov8n", "yolov8s"):
        m = metrics_of(runs / name)
        if m:
            s.figures[name] = {
                k: round(m[k], 4) for k in ("val/mAP50", "train/epochs", "train/time_s") if k in m
            }
    best = yolo / "weights" / "best.pt"

    # 2. the same checkpoint evaluated on the CPU and on CUDA: the evaluator's numbers agree
    s = Step(
        "eval_cpu_vs_cuda", f"one checkpoint evaluated on CPU and CUDA: val mAP50 within {MAP_TOLERANCE}"
    )
    cpu_env = {**c.env, "CUDA_VISIBLE_DEVICES": ""}
    if not best.is_file() and cuda:
        c.steps.append(s)
        s.status, s.error = "skipped", "no checkpoint from yolo_amp"
    else:
        c.run(
            s,
            [
                py(
                    "-m",
                    "evaluation",
                    f"checkpoint={best}",
                    "evaluation.splits=[val]",
                    *TINY_EVAL,
                    f"hydra.run.dir={runs / 'eval_cuda'}",
                )
            ],
            120,
        )
        if s.status == "passed":
            c.run(
                Step("eval_cpu", "(the CPU side of eval_cpu_vs_cuda)"),
                [
                    py(
                        "-m",
                        "evaluation",
                        f"checkpoint={best}",
                        "evaluation.splits=[val]",
                        *TINY_EVAL,
                        f"hydra.run.dir={runs / 'eval_cpu'}",
                    )
                ],
                120,
                env=cpu_env,
            )
            c.steps.pop()
            a, b = (
                metrics_of(runs / "eval_cuda").get("val/mAP50"),
                metrics_of(runs / "eval_cpu").get("val/mAP50"),
            )
            s.figures = {"cuda_mAP50": a, "cpu_mAP50": b}
            if a is None or b is None or abs(a - b) > MAP_TOLERANCE:
                s.status, s.error = "failed", f"val mAP50 CUDA {a} vs CPU {b} (tolerance {MAP_TOLERANCE})"

    # 3. PyTorch CUDA vs CPU boxes through the public API (sigdet.load(device=...))
    s = Step(
        "predict_parity", "sigdet.load(device=cuda) vs device=cpu on the embedded test pages: same boxes"
    )
    out = c.run(s, [py("-c", PARITY, str(best), str(EMBEDDED / "test"), gpu_dev)], 120)
    if s.status == "passed":
        s.figures = json.loads(out.strip().splitlines()[-1])
        if s.figures["pages_same_count"] != s.figures["pages"] or s.figures["max_box_diff_px"] > 1.0:
            s.status, s.error = "failed", "CUDA and CPU boxes differ by more than 1 px or in number"

    # 4. a DETR-family model through accelerate on CUDA, bf16 where the GPU has it (else fp16)
    s = Step(
        "detr_accelerate",
        "debug DETR, a few optimizer steps through accelerate on CUDA (bf16 / fp16), evaluated",
    )
    prec = "no" if args.rehearse else "bf16" if facts.get("bf16") else "fp16"
    c.run(
        s,
        [
            py(
                "-m",
                "training",
                "model=debug/detr",
                "trainer@train=transformers",
                "train.epochs=1",
                "train.max_steps=4",
                "train.imgsz=64",
                "train.batch=2",
                "train.workers=0",
                f"train.device={dev}",
                f"train.precision={prec}",
                "evaluation.splits=[val]",
                *TINY_EVAL,
                f"hydra.run.dir={runs / 'detr'}",
            )
        ],
        180,
    )
    m = metrics_of(runs / "detr")
    if m:
        s.figures = {"precision": prec} | {k: round(m[k], 4) for k in ("val/mAP50",) if k in m}

    # 5. export (ONNX; TensorRT FP32 / FP16 where tensorrt imports) and the latency benchmark's CUDA rows
    s = Step("export_latency", "ONNX (+ TensorRT when importable) export with parity, latency with CUDA rows")
    formats = (
        "[onnx,tensorrt_fp32,tensorrt_fp16]"
        if not str(facts.get("v_tensorrt")).startswith("missing")
        else "[onnx]"
    )
    text = c.run(
        s,
        [
            py(
                "-m",
                "export",
                f"checkpoint={best}",
                f"formats={formats}",
                "parity.n_images=4",
                f"hydra.run.dir={runs / 'export'}",
            ),
            py(
                "-m",
                "export.benchmark",
                f"export_dir={runs / 'export'}",
                "warmup=5",
                "min_runs=30",
                "min_seconds=1",
                "throughput_seconds=1",
                f"hydra.run.dir={runs / 'latency'}",
            ),
        ],
        240,
    )
    lat = runs / "latency" / "latency.md"
    if lat.is_file():
        shutil.copyfile(lat, args.out / "latency.md")
        s.figures["latency"] = "latency.md beside this report"
    if formats == "[onnx]":
        s.figures["tensorrt"] = (
            f"not run: tensorrt {facts.get('v_tensorrt')} (too large to carry: see gpu_wheels.sh)"
        )
    s.figures["onnxruntime_cuda"] = (
        "CUDAExecutionProvider available"
        if "CUDAExecutionProvider" in facts.get("ort_providers", [])
        else "no CUDAExecutionProvider (onnxruntime-gpu is not in the image and too large to carry)"
    )
    del text

    # 6. model selection on two models with its GPU latency columns
    s = Step("model_selection", "model selection, 2 models (YOLOv8n, debug DETR), with GPU latency columns")
    c.run(
        s,
        [
            py(
                "-m",
                "evaluation.model_selection",
                "preset=cpu_tiny",
                "data=embedded",
                "models=[yolov8n,debug/detr]",
                "latency.min_runs=5",
                f"paths.output_dir={runs}",
            )
        ],
        300,
    )
    sel = next(iter(sorted(runs.glob("model_selection/*/model_selection.md"))), None)
    if sel is not None:
        shutil.copyfile(sel, args.out / "model_selection.md")
        s.figures["table"] = "model_selection.md beside this report"

    # 7. predict on CUDA: the shipped model over a PDF, pages.jsonl streamed
    s = Step("predict_cuda", "sigdet predict device=cuda on the embedded test pages, FP32 and half=true")
    base = ["-m", "sigdet", "predict", f"source={EMBEDDED / 'test'}", f"device={gpu_dev}"]
    c.run(
        s,
        [
            py(*base, f"hydra.run.dir={runs / 'predict'}"),
            py(*base, "half=true", f"hydra.run.dir={runs / 'predict_half'}"),
        ],
        180,
    )
    for name in ("predict", "predict_half"):
        summ = runs / name / "summary.json"
        if summ.is_file():
            d = json.loads(summ.read_text())
            s.figures[name] = {k: d[k] for k in ("n_pages", "n_signed_pages") if k in d}

    write_report(args.out, facts, c.steps, time.monotonic() - t_start, args.dry_run, args.rehearse)
    shutil.rmtree(scratch, ignore_errors=True) if not any(x.status == "failed" for x in c.steps) else None
    failed = [x.name for x in c.steps if x.status in ("failed", "timed out")]
    print(f"wrote {args.out / 'gpu_check.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))


def write_report(
    out: Path, facts: dict, steps: list[Step], seconds: float, dry: bool, rehearse: bool
) -> None:
    gpu = facts.get("gpu") or "no CUDA device"
    head = [
        "# GPU check",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {facts.get('commit')}"
        + ("; **dry run** (CUDA steps not run)" if dry else "")
        + ("; **CPU rehearsal** (the CUDA steps ran on the CPU: no GPU figure here)" if rehearse else ""),
        f"- device: {gpu}"
        + (f", {facts.get('gpu_memory_gib')} GiB, bf16 {facts.get('bf16')}" if facts.get("gpu") else ""),
        f"- nvidia-smi: {facts.get('nvidia_smi', 'not found')}",
        f"- Python {facts.get('python')}, torch {facts.get('torch')} (CUDA {facts.get('torch_cuda')}), "
        f"{facts.get('cpu_count')} CPU cores",
        "- versions: " + ", ".join(f"{k[2:]} {v}" for k, v in facts.items() if k.startswith("v_")),
        f"- ONNX Runtime providers: {', '.join(facts.get('ort_providers', [])) or 'none'}",
        f"- the whole check: {seconds:.0f} s",
        "",
        "| step | what | status | seconds | figures | first line of the failure |",
        "|---|---|---|---|---|---|",
    ]
    rows = [
        f"| {s.name} | {s.what} | **{s.status}** | {s.seconds:.0f} | "
        + "; ".join(f"{k}: {v}" for k, v in s.figures.items()).replace("|", "/")
        + f" | {s.error.replace('|', '/')} |"
        for s in steps
    ]
    (out / "gpu_check.md").write_text("\n".join(head + rows) + "\n", encoding="utf-8")
    doc = {
        "facts": facts,
        "seconds": seconds,
        "dry_run": dry,
        "rehearsal": rehearse,
        "steps": [s.__dict__ for s in steps],
    }
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
