"""``python -m evaluation.model_selection``: the model-selection benchmark (see conf/model_selection.yaml).

Each model is trained by ``python -m training`` in its own process (so that one model's memory or crash does
not affect the next), evaluated by the shared evaluator, then timed per the latency protocol on the CPU (even where CUDA exists)
and, when CUDA is available, on the GPU too. One
folder per model under the run dir; a model whose ``result.json`` exists is not redone.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from evaluation.latency import benchmark_detector, environment, protocol
from evaluation.metrics import HEADLINE
from evaluation.report import fmt_ci, fmt_num, markdown_table, pyplot, save_figure, write_csv
from training.backends import get_backend
from training.cli import CONF, ConfigError, UserError, cli
from training.data import load_dataset
from training.data.images import load_rgb
from training.overrides import flatten_overrides
from training.progress import progress
from training.tracking import tracked
from training.train import run_dir_of
from training.workers import claim, pin_device, release, worker_index

log = logging.getLogger(__name__)
# W&B: one group per selection (WANDB_GROUP.format(cfg.name)), one run per model and a summary run, tagged
WANDB_GROUP, WANDB_TAGS = "model-selection-{}", ["signature-detection", "model-selection"]


def _model_backend(name: str) -> str:
    exp = CONF / "experiment" / f"{name}.yaml"
    model = CONF / "model" / f"{name}.yaml"
    if exp.is_file():
        for d in OmegaConf.load(exp).get("defaults", []):
            if isinstance(d, DictConfig) and "override /model" in d:
                model = CONF / "model" / f"{d['override /model']}.yaml"
    if not model.is_file():
        raise ConfigError(
            f"models: {name!r} is neither a model in conf/model/ nor an experiment in conf/experiment/"
        )
    return str(OmegaConf.load(model).backend)


def _has_upstream_setting(name: str) -> bool:
    """Whether conf/model/<name>.yaml names the weights experiment=upstream fine-tunes from."""
    model = CONF / "model" / f"{name}.yaml"
    return model.is_file() and "upstream_weights" in OmegaConf.load(model)  # the key: its value may be ${...}


def _training_command(
    cfg: DictConfig, name: str, backend: str, run_dir: Path, data_overrides: list[str]
) -> list[str]:
    cmd = [sys.executable, "-m", "training"]
    if (CONF / "experiment" / f"{name}.yaml").is_file():
        cmd.append(f"experiment={name}")
    elif _has_upstream_setting(name):
        # its pretrained weights and (transformers models) its trainer come from its model file
        cmd += ["experiment=upstream", f"model={name}"]
    else:
        cmd += [f"model={name}", f"trainer@train={backend}"]
    cmd += data_overrides
    cmd += flatten_overrides(cfg.train_overrides) + flatten_overrides(cfg.backend_overrides.get(backend))
    cmd += [f"seed={cfg.seed}", f"hydra.run.dir={run_dir}"]
    if cfg.logger.type == "wandb":
        # the whole logger node (project, entity, mode...), then one group per selection, one run per model,
        # tagged: the project page compares them as they finish
        run_logger = {
            **OmegaConf.to_container(cfg.logger, resolve=True),
            "group": WANDB_GROUP.format(cfg.name),
            "name": name.replace("/", "-"),
            "job_type": "model-selection",
            "tags": WANDB_TAGS,
        }
        cmd += ["logger=wandb", *flatten_overrides({"logger": run_logger})]
    if (run_dir / "weights").exists():
        cmd.append("resume=true")  # an earlier attempt was interrupted: continue it
    return cmd


def _data_overrides() -> list[str]:
    """Forward this command's data choice and data.* / evaluation.* overrides to each training run."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out = [f"data={hc.runtime.choices['data']}"]
    out += [o for o in hc.overrides.task if o.lstrip("+~").startswith(("data.", "evaluation."))]
    return out


def run_model(cfg: DictConfig, name: str, out_dir: Path, data_overrides: list[str], page: np.ndarray) -> dict:
    """Train (or take the given checkpoint), evaluate and time one model; writes and returns its result."""
    result_file = out_dir / "result.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("data_overrides") != data_overrides:
            raise UserError(
                f"{result_file}: done with data {done.get('data_overrides')} but this run asks for {data_overrides}; "
                f"use another name=... for another dataset"
            )
        log.info("%s: done already, skipping", name)
        return done
    backend = _model_backend(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = (cfg.checkpoints or {}).get(name)
    if ckpt is None:
        run_dir = out_dir / "run"
        if not (run_dir / "metrics.json").is_file():
            cmd = _training_command(cfg, name, backend, run_dir, data_overrides)
            log.info("%s: %s", name, " ".join(cmd))
            with open(out_dir / "train.log", "a", encoding="utf-8") as logf:
                r = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, check=False)
            if r.returncode != 0:
                raise UserError(f"training {name} failed (exit {r.returncode}); see {out_dir / 'train.log'}")
        run_metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics, ckpt = run_metrics["metrics"], run_metrics["provenance"]["checkpoint"]
    else:
        metrics = None
    load = functools.partial(get_backend(backend).from_checkpoint, ckpt, cfg.evaluation.decode[backend])
    # each latency column on the device it names, whatever device the backend would pick by itself (CUDA when
    # it is there): the CPU column on a GPU VM must not time the GPU
    detector = load(device="cpu", run_dir=out_dir)
    if metrics is None:
        from evaluation.evaluator import evaluate_detector

        dataset = load_dataset(cfg.data, [cfg.split])
        scorer = (
            load(run_dir=out_dir) if torch.cuda.is_available() else detector
        )  # scored where it is fastest
        res, _ = evaluate_detector(scorer, dataset[cfg.split], cfg.evaluation)
        metrics = {f"{cfg.split}/{k}": v for k, v in res.metrics.items()}
    timing = functools.partial(
        benchmark_detector,
        image=page,
        imgsz=int(cfg.latency.imgsz),
        conf=float(cfg.evaluation.conf_fixed),
        **protocol(cfg.latency),
    )
    latency = timing(detector)
    extra = {}
    if cfg.latency.gpu and torch.cuda.is_available():
        extra["latency_gpu"] = timing(load(device="cuda", run_dir=out_dir))
    result = {
        "model": name,
        "backend": backend,
        "checkpoint": str(ckpt),
        "params": detector.num_parameters(),
        "data_overrides": data_overrides,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(f"{cfg.split}/")},
        "latency": latency,
        **extra,
    }
    result_file.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def selection_rows(results: list[dict], split: str) -> list[dict[str, str]]:
    rows = []
    for r in results:
        m, lat = r["metrics"], r["latency"]
        row = {
            "model": r["model"],
            "params (M)": f"{r['params'] / 1e6:.1f}",
            "CPU ms (model, p50)": f"{lat['model/p50_ms']:.1f}",
            "CPU ms (end-to-end, p50)": f"{lat['e2e/p50_ms']:.1f}",
        }
        if any("latency_gpu" in x for x in results):
            gpu = r.get("latency_gpu")
            row["GPU ms (model, p50)"] = f"{gpu['model/p50_ms']:.2f}" if gpu else "n/a"
            row["GPU ms (end-to-end, p50)"] = f"{gpu['e2e/p50_ms']:.2f}" if gpu else "n/a"
        for k in HEADLINE:
            row[k] = fmt_num(m.get(f"{split}/{k}")) + fmt_ci(m, f"{split}/{k}", " ")
        rows.append(row)
    return rows


def highlights(results: list[dict], split: str) -> dict[str, str]:
    """Best mAP50, best mAP50-95 and fastest model; ties are named as ties, not broken by list order."""

    def pick(values: list[tuple[float, str]], best_fn) -> str:
        best = best_fn(v for v, _ in values)
        winners = [m for v, m in values if v == best]
        if len(winners) == len(values) > 1:
            return f"no difference (all {best:.4f})"
        return ", ".join(winners) + f" ({best:.4f})"

    def metric(key):
        return [(float(r["metrics"].get(f"{split}/{key}") or 0.0), r["model"]) for r in results]

    return {
        "best mAP50": pick(metric("mAP50"), max),
        "best mAP50-95": pick(metric("mAP50-95"), max),
        "fastest (CPU, model p50 ms)": pick(
            [(r["latency"]["model/p50_ms"], r["model"]) for r in results], min
        ),
    }


def scatter(results: list[dict], split: str, path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 5), dpi=120)
    for r in results:
        x, y = r["latency"]["model/p50_ms"], r["metrics"].get(f"{split}/mAP50-95") or 0.0
        ax.scatter(x, y, s=25)
        ax.annotate(r["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(
        xscale="log",  # latencies span two orders of magnitude
        xlabel="CPU latency, model only, p50 (ms, log scale)",
        ylabel=f"{split} mAP50-95",
        title="Model selection: latency vs accuracy",
    )
    return save_figure(fig, path, ax)


def write_selection(
    run_dir: Path, results: list[dict], split: str, env: dict, data_name: str
) -> tuple[list[dict[str, str]], str]:
    """Write ``model_selection.{md,csv,json,png}``; returns the table's rows and the Markdown."""
    rows = selection_rows(results, split)
    hl = highlights(results, split)
    note = (
        f"Data: {data_name}, split {split}; CPU: {env['cpu']} ({results[0]['latency'].get('threads', env['torch_threads']):.0f} torch threads); "
        f"torch {env['version/torch']}; latency at batch 1 per the protocol of evaluation/latency.py."
    )
    md = markdown_table(rows, f"# Model selection\n\n{note}\n") + "\n"
    md += "\n".join(f"- **{k}**: {v}" for k, v in hl.items()) + "\n"
    (run_dir / "model_selection.md").write_text(md, encoding="utf-8")
    write_csv(run_dir / "model_selection.csv", rows)
    doc = {"environment": env, "split": split, "data": data_name, "highlights": hl, "results": results}
    (run_dir / "model_selection.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    scatter(results, split, run_dir / "model_selection.png")
    return rows, md


def _model_dir(run_dir: Path, model) -> Path:
    """Where one model's run, result.json and claim live."""
    return run_dir / "models" / str(model).replace("/", "__")


def model_selection(cfg: DictConfig) -> None:
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    pin_device(cfg.devices, worker_index())  # before anything touches CUDA
    with open_dict(cfg):
        # fixed before any model is loaded (ultralytics lowers it to cores - 1 when it selects a device)
        cfg.latency.threads = int(cfg.latency.threads or torch.get_num_threads())
    data_overrides = _data_overrides()
    # the page every model is timed on: the first image of the reported split at the fixed input size
    # (square, like the 640x640 upstream pages, so that no library gets a smaller rectangular input)
    first = load_dataset(cfg.data, [cfg.split])[cfg.split].images[0].file
    size = int(cfg.latency.imgsz)
    page = np.asarray(load_rgb(first).resize((size, size)))
    failed, busy = [], []
    for m in progress(list(cfg.models), "model selection", unit="model"):
        out_dir = _model_dir(run_dir, m)
        if not (out_dir / "result.json").is_file() and not claim(out_dir):
            busy.append(str(m))  # another worker (SIGDET_WORKER=k) is on it
            continue
        try:
            run_model(cfg, str(m), out_dir, data_overrides, page)
        except UserError as e:
            # one model's failure does not stop a day-long selection; it is retried next run
            log.error("%s", e)
            failed.append(str(m))
        finally:
            release(out_dir)
    # every finished model, this worker's and the others', in the configured order
    results = [
        json.loads(f.read_text())
        for m in cfg.models
        if (f := _model_dir(run_dir, m) / "result.json").is_file()
    ]
    if not results:
        raise UserError(f"no model finished; failed: {failed}, running in other workers: {busy}")
    rows, md = write_selection(run_dir, results, str(cfg.split), environment(), str(cfg.data.name))
    if busy:
        print(md)
        log.warning(
            "models still running in other workers: %s; the last worker to finish writes the full table", busy
        )
        return
    if (cfg.get("logger") or {}).get("type") == "wandb":
        with open_dict(cfg):
            cfg.logger.group, cfg.logger.name = WANDB_GROUP.format(cfg.name), "summary"
            cfg.logger.job_type, cfg.logger.tags = "model-selection-summary", WANDB_TAGS
    with tracked(cfg.get("logger"), run_dir, cfg) as tracker:
        tracker.log_rows("model_selection", rows)
        tracker.log_images("model_selection/plots", [run_dir / "model_selection.png"])
    print(md)
    if failed:
        raise UserError(f"models that failed (re-run the same command to retry them): {failed}")


@cli("model_selection")
def main(cfg: DictConfig) -> None:
    model_selection(cfg)


if __name__ == "__main__":
    main()
