"""Write notebooks/*.ipynb (no outputs) from the cell lists below: edit here, re-run, commit.

python scripts/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"


class md(str):
    """A Markdown cell."""


PARAMS = '''# parameters: "tiny" = a CPU run in minutes on the embedded data (what the tests execute);
# "full" = the GPU-VM run on the real dataset (tech4humans/signature-detection), hours on a T4
SETTING = "tiny"
OUT = "outputs/notebooks"'''

SETUP = """from pathlib import Path

from evaluation.notebook import show
from sigdet import run  # the command, in this process: sigdet.run("select", ...) = `sigdet select ...`

assert SETTING in ("tiny", "full"), SETTING
out = Path(OUT).resolve()"""

NOTEBOOKS = {
    "01_model_selection": [
        md(
            "# 01 Model selection\n\nTrain every candidate with its upstream settings, evaluate it with the shared "
            "evaluator (COCO mAP, P/R/F1 at the max-F1 confidence, bootstrap intervals), time it on the CPU per the "
            "latency protocol, and compare. The same command as `python -m evaluation.model_selection` in docs/model-selection.md."
        ),
        PARAMS,
        SETUP,
        """if SETTING == "tiny":
    # random init, a couple of steps at 64 px: checks the pipeline, says nothing about the models
    args = ["preset=cpu_tiny", "data=embedded", "models=[yolov8n,debug/detr]", "latency.min_runs=3"]
    name = "cpu_tiny"
else:
    args = ["data=hf_signature_detection", "logger=wandb"]  # the 21 upstream models
    name = "upstream"
run("evaluation.model_selection", *args, f"paths.output_dir={out}")
sel = out / "model_selection" / name""",
        md("The table (95% bootstrap intervals beside each accuracy) and the latency-vs-accuracy plot:"),
        """show(sel / "model_selection.md")
show(sel / "model_selection.png")""",
        md("Ours beside the published table:"),
        """run("evaluation.full_report", f"out={out / 'report_01'}", f"model_selection={sel}")
show(out / "report_01" / "report.md")""",
    ],
    "02_hyperparameter_tuning": [
        md(
            "# 02 Hyperparameter tuning (Optuna)\n\nThe published search space (dropout, lr0, box, cls, optimizer "
            "AdamW / RMSProp) over YOLOv8s, 20 trials, pruning on the per-epoch F1; several copies of the command "
            "share one study (`sweep.storage=`). Then the base-vs-tuned table and the best parameters as an experiment."
        ),
        PARAMS,
        SETUP,
        """if SETTING == "tiny":
    args = ["sweep=quickstart_tiny", "sweep.n_trials=2", "sweep.overrides.train.epochs=1"]
    study = "quickstart_tiny"
else:
    args = ["sweep=yolov8s_optuna", "sweep.logger=wandb"]  # upstream yolov8s: reads the real dataset
    study = "yolov8s_optuna"
run("training.sweep", *args, f"paths.output_dir={out}")
sweep_dir = out / "sweeps" / study""",
        """show(sweep_dir / "summary.md")
for plot in ("history", "importances", "parallel_coordinates"):
    if (sweep_dir / f"{plot}.png").is_file():
        show(sweep_dir / f"{plot}.png")""",
        md("The best trial as a ready-to-run experiment, and the report section:"),
        """print((sweep_dir / "experiment" / f"{study}_best.yaml").read_text())
run("evaluation.full_report", f"out={out / 'report_02'}", f"tuning={sweep_dir}")
show(out / "report_02" / "report.md")""",
    ],
    "03_classifier_hard_negative_mining": [
        md(
            "# 03 Region classifier and hard-negative mining\n\nColoured-region proposals, a ResNet18 over the crops "
            "(signature / stamp / thumb), two-stage transfer learning, then a round of hard-negative mining; "
            "synthetic pages for stamps and thumbprints, real signatures from the detection data."
        ),
        PARAMS,
        SETUP,
        """if SETTING == "tiny":
    args = ["model.weights=null", "model.imgsz=32", "crops.synthetic.pages.train=6", "crops.synthetic.pages.val=3",
            "crops.synthetic.pages.test=3", "train.stage1.epochs=1", "train.stage2.epochs=1", "train.mining.epochs=1",
            "train.max_steps=2", "train.augment.copies=1", "evaluation.n_bootstrap=20", "evaluation.n_pages=2"]
else:
    args = ["model.imgsz=224", "crops.synthetic.pages.train=1000", "crops.synthetic.pages.val=200",
            "crops.synthetic.pages.test=200", "data=hf_signature_detection", "logger=wandb"]
run_dir = out / "classifier"
run("training", "experiment=classifier_two_stage", *args, f"hydra.run.dir={run_dir}")""",
        md(
            "Per-class table, before vs after mining, the crop counts, the confusion matrix and a page end to end:"
        ),
        """show(run_dir / "classifier.md")
show(run_dir / "confusion_test.png")
show(run_dir / "pages" / "test_page_00000.png")""",
        md("The same generator as a dataset tool (COCO pages + class folders):"),
        """run("training.classifier.generate", f"out={out / 'synthetic'}", "pages.train=4", "pages.val=2", "pages.test=2")
sorted(p.name for p in (out / "synthetic").iterdir())""",
    ],
    "04_export_and_latency": [
        md(
            "# 04 Export and latency\n\nExport a trained detector to ONNX and OpenVINO (FP32, BF16 where the CPU has "
            "it, INT8), each checked for parity against PyTorch; then time every runtime and write the upstream "
            '"ONNX (CPU) vs TensorRT (GPU)" table. On a CUDA machine add the TensorRT formats.'
        ),
        PARAMS,
        SETUP,
        """if SETTING == "tiny":
    run("training", "experiment=quickstart", "train.epochs=1", "train.imgsz=64", "evaluation.n_bootstrap=0",
        "evaluation.ultralytics_metrics=false", f"hydra.run.dir={out / 'detector'}")
    checkpoint = out / "detector" / "weights" / "best.pt"
    formats, extra, bench = "[onnx,openvino_fp32,openvino_int8]", ["calibration.n_images=4"], [
        "warmup=1", "min_runs=3", "min_seconds=0"]
else:
    checkpoint = Path("outputs/final/yolov8s/weights/best.pt")  # the tuned model trained on the real data
    formats, extra, bench = "[onnx,openvino_fp32,openvino_bf16,openvino_int8,tensorrt_fp32,tensorrt_fp16]", [
        "data=hf_signature_detection"], ["logger=wandb"]
run("export", f"checkpoint={checkpoint}", f"formats={formats}", *extra, f"hydra.run.dir={out / 'export'}")
show(out / "export" / "parity.md")""",
        """run("export.benchmark", f"export_dir={out / 'export'}", *bench, f"hydra.run.dir={out / 'latency'}")
show(out / "latency" / "latency.md")""",
        md("The evaluator takes the exported model like a checkpoint:"),
        """run("evaluation", f"checkpoint={out / 'export' / 'openvino_int8' / 'model.xml'}", "evaluation.splits=[val]",
    "evaluation.n_bootstrap=0", f"hydra.run.dir={out / 'eval_int8'}")
run("evaluation.full_report", f"out={out / 'report_04'}", f"latency={out / 'latency'}")
show(out / "report_04" / "report.md")""",
    ],
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        for i, src in enumerate(cells):
            cell = new_markdown_cell(str(src)) if isinstance(src, md) else new_code_cell(src)
            cell.id = f"cell-{i:02d}"  # stable ids: regenerating does not churn the diff
            if src is PARAMS:
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
        nbformat.write(nb, OUT / f"{name}.ipynb")
        print("wrote", OUT / f"{name}.ipynb")


if __name__ == "__main__":
    main()
