"""CPU paths vs ONNX Runtime FP32: a 1-class YOLOv8s at 640 (random weights, or --checkpoint) and the ResNet18
region classifier at 224, exported to every format this machine runs, timed per the latency protocol, with
ultralytics' own ONNX and OpenVINO INT8 exports (through its predictor) as peer rows of the same run, OpenVINO's
per-layer counters and async throughput. Prints the latency tables and each path's speed-up over ONNX Runtime
FP32 in the same run.

    python benchmarks/export_latency.py --out /tmp/export-bench [--runs 100 --seconds 10 --threads 2]
    python benchmarks/export_latency.py --out /tmp/b --checkpoint <run>/weights/best.pt \
        --data-yaml /data/signatures-xc8up/data.yaml --skip-classifier       # a trained model: mAP per row

Accuracy is not meaningful for random weights: with --checkpoint and --data-yaml, the parity table and an
"mAP50 (val)" column per row (ours and the peers', one evaluator) come from the data's valid split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import training  # noqa: E402,F401
from training.cli import CONF  # noqa: E402


def yolov8s_checkpoint(path: Path, imgsz: int) -> Path:
    """A 1-class YOLOv8s with random init, saved the way ultralytics saves a trained one."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8s.yaml", nc=1, verbose=False)
    model.names = {0: "signature"}
    model.args = {"imgsz": imgsz}
    torch.save({"model": model.half(), "train_args": {"imgsz": imgsz}, "epoch": -1}, path)
    return path


def classifier_checkpoint(path: Path) -> Path:
    from training.classifier.model import RegionClassifier

    torch.manual_seed(0)
    return RegionClassifier(["signature", "stamp", "thumb"], 224).save(path)


def run(name: str, checkpoint: Path, args, extra: list[str]) -> dict:
    from export.benchmark import benchmark_export
    from export.run import export_checkpoint

    out = args.out
    threads = [f"threads={args.threads}"] if args.threads else []
    data = ["data=yolo_folder", f"data.yaml={args.data_yaml}"] if args.data_yaml and name == "yolov8s" else []
    over = [f"checkpoint={checkpoint}", "formats=[onnx,openvino_fp32,openvino_bf16,openvino_int8]"]
    over += [f"calibration.n_images={args.calib}", "parity.n_images=4", "evaluation.n_bootstrap=0"]
    over += [f"paths.output_dir={out}", *extra, *threads, *data]
    if args.input_hw and name == "yolov8s":
        over.append(f"input_hw=[{args.input_hw}]")
    bench = [f"export_dir={out / name}", f"warmup={args.warmup}", f"min_runs={args.runs}"]
    bench += [f"min_seconds={args.seconds}", f"+paths.run_dir={out / name}", *threads, *data]
    bench += [f"throughput_seconds={args.throughput}", "profile=true", f"accuracy={bool(data)}"]
    if name == "yolov8s" and not args.no_peers:
        bench.append("peers=[ultralytics_onnx,ultralytics_openvino_int8]")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("export", over)
        bcfg = compose("export_benchmark", bench)
    export_checkpoint(cfg, out / name)
    doc = benchmark_export(out / name, bcfg)
    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    ort = next(r for r in rows if r["runtime"] == "ONNX Runtime" and r["device"] == "CPU")
    print(f"\n## {name}: speed-up over ONNX Runtime FP32 (model p50 {ort['model/p50_ms']:.1f} ms)\n")
    print("| path | model p50 (ms) | speed-up | end-to-end p50 (ms) | speed-up |\n|---|---|---|---|---|")
    for r in [r for r in rows if r["device"] == "CPU"]:
        print(
            f"| {r['runtime']} {r['precision']} | {r['model/p50_ms']:.1f} | {ort['model/p50_ms'] / r['model/p50_ms']:.2f}x"
            f" | {r['e2e/p50_ms']:.1f} | {ort['e2e/p50_ms'] / r['e2e/p50_ms']:.2f}x |"
        )
    choice = json.loads((out / name / "sigdet_export.json").read_text()).get("cpu_choice")
    if choice:
        print(f"\npython -m export chose {choice['format']}: {choice['why']}")
    return doc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-classifier", action="store_true")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="a trained ultralytics .pt instead of random"
    )
    p.add_argument("--data-yaml", type=Path, default=None, help="YOLO data.yaml: calibration, parity, mAP")
    p.add_argument("--input-hw", default=None, help="rectangular input 'h,w' for the detector, e.g. 640,480")
    p.add_argument(
        "--throughput", type=float, default=5.0, help="seconds of async throughput per OpenVINO row"
    )
    p.add_argument("--no-peers", action="store_true", help="skip ultralytics' own exports")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or yolov8s_checkpoint(args.out / "yolov8s-random.pt", args.imgsz)
    run("yolov8s", ckpt, args, [f"imgsz={args.imgsz}"] if args.checkpoint else [])
    if not args.skip_classifier:
        ck = classifier_checkpoint(args.out / "resnet18-random.pt")
        pages = [f"crops.synthetic.pages.{k}={n}" for k, n in {"train": 12, "val": 6, "test": 0}.items()]
        run("resnet18-classifier", ck, args, ["crops.detection.enabled=false", *pages])


if __name__ == "__main__":
    main()
