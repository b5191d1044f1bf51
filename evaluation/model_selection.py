"""``python -m evaluation.model_selection``: the model-selection benchmark (see conf/model_selection.yaml).

Each model is trained by ``python -m training`` in its own process (so that one model's memory or crash does
not affect the next), once per training seed (``seeds``), evaluated by the shared evaluator, then timed per the
latency protocol on the CPU (even where CUDA exists) and, when CUDA is available, on the GPU too; its forward
GFLOPs are counted at the latency input size. One folder per model and seed (``models/<model>/seed_<s>/``); a
(model, seed) whose ``result.json`` exists is not redone. Beside it, ``matches.npz`` keeps the per-page COCO
matches of its evaluation: what the rank-stability column resamples (pages and seeds) without re-predicting.
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
from omegaconf.errors import ConfigAttributeError

from evaluation.latency import benchmark_detector, environment, protocol
from evaluation.metrics import HEADLINE, CocoMatch
from evaluation.report import (
    fmt_num,
    fmt_over_seeds,
    markdown_table,
    mean_over_seeds,
    pyplot,
    save_figure,
    spread,
    write_csv,
)
from training.backends import get_backend
from training.cli import CONF, ConfigError, UserError, cli, first_line
from training.data import load_dataset
from training.data.images import load_rgb
from training.overrides import flatten_overrides
from training.progress import progress
from training.tracking import tracked
from training.train import run_dir_of
from training.workers import claim, pin_device, release, worker_index

log = logging.getLogger(__name__)
# W&B: one group per selection (WANDB_GROUP.format(cfg.name)), one run per model and seed and a summary run, tagged
WANDB_GROUP, WANDB_TAGS = "model-selection-{}", ["signature-detection", "model-selection"]
# SPDX ids a product may ship under any licence with (Apache-2.0, MIT, BSD-*); anything else, unknown included, is not
PERMISSIVE, PERMISSIVE_PREFIXES = ("Apache-2.0", "MIT"), ("BSD-",)
NO_WEIGHTS = "none"  # licence.weights of a model trained from random init: nothing inherited restricts it
LICENCE_FILTERS = ("apache", "permissive")  # `licence=`: both keep rows whose code AND weights are permissive
RANK_METRICS = ("mAP50", "mAP50-95")  # `rank_by=`: the AP metrics the page resampling recomputes
MATCHES = "matches.npz"  # per (model, seed): the per-page COCO matches of its evaluation (page_matches)


def _model_file(name: str) -> Path:
    """conf/model/<name>.yaml, or the model an experiment conf/experiment/<name>.yaml overrides."""
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
    return model


def _model_backend(name: str) -> str:
    return str(OmegaConf.load(_model_file(name)).backend)


def model_meta(name: str) -> dict:
    """The model file's licences (``licence: {code, weights}``: SPDX ids; weights ``none``: random init) and
    published parameter count (``params_m``, millions; null: none published)."""
    path = _model_file(name)
    model = OmegaConf.load(path)
    OmegaConf.set_struct(model, True)  # a missing key is an error here, never a silent "unknown"
    try:
        licence = {"code": model.licence.code, "weights": model.licence.weights}
        return {"licence": licence, "params_m": model.params_m}
    except (ConfigAttributeError, AttributeError) as e:  # a key missing, or licence: null
        raise ConfigError(
            f"{path}: needs `licence: {{code: <SPDX>, weights: <SPDX>}}` and `params_m` ({first_line(e, 80)})"
        ) from None


def is_permissive(spdx: str | None) -> bool:
    """Whether an SPDX id is one of the permissive licences (Apache-2.0, MIT, BSD-*); unknown (None) is not."""
    return spdx is not None and (str(spdx) in PERMISSIVE or str(spdx).startswith(PERMISSIVE_PREFIXES))


def keeps_licence(licence: dict, wanted: str | None) -> bool:
    """Whether a row with ``licence`` ({code, weights}) stays in the table under ``licence=wanted``: both
    permissive, or weights ``none`` (random init) with permissive code."""
    if wanted is None:
        return True
    if wanted not in LICENCE_FILTERS:
        raise ConfigError(f"licence={wanted!r}: valid values are [null, {', '.join(LICENCE_FILTERS)}]")
    weights = licence["weights"]
    return is_permissive(licence["code"]) and (weights == NO_WEIGHTS or is_permissive(weights))


def training_seeds(cfg: DictConfig) -> list[int]:
    """``seeds``: a non-empty list of distinct integers."""
    seeds = cfg.seeds
    ok = OmegaConf.is_list(seeds) and len(seeds) > 0
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds}: a non-empty list of distinct integers, e.g. seeds=[0,1,2]")
    return [int(s) for s in seeds]


def _has_upstream_setting(name: str) -> bool:
    """Whether conf/model/<name>.yaml names the weights experiment=upstream fine-tunes from."""
    model = CONF / "model" / f"{name}.yaml"
    return model.is_file() and "upstream_weights" in OmegaConf.load(model)  # the key: its value may be ${...}


def _training_command(
    cfg: DictConfig, name: str, seed: int, backend: str, run_dir: Path, data_overrides: list[str]
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
    cmd += [f"seed={seed}", f"hydra.run.dir={run_dir}"]
    if cfg.logger.type == "wandb":
        # the whole logger node (project, entity, mode...), then one group per selection, one run per model and
        # seed, tagged: the project page compares them as they finish
        run_logger = {
            **OmegaConf.to_container(cfg.logger, resolve=True),
            "group": WANDB_GROUP.format(cfg.name),
            "name": f"{name.replace('/', '-')}-seed{seed}",
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


# -- per-page matches and the page resampling ---------------------------------------------------------------
def page_matches(split, preds: dict) -> dict[str, np.ndarray]:
    """What re-scoring ``preds`` on any resample of ``split``'s pages needs, from pycocotools' own matching (area
    "all", maxDets 100), compactly: per detection its category, page, score and, as bit t of ``tp`` / ``ignored``,
    whether it matched a true box (an ignore region) at IoU threshold t; per category and page the true boxes that
    count (``n_gt``). Pages in pycocotools' order (sorted ids, ``img_ids``); the same pages give the same order."""
    m = CocoMatch(split, preds)
    n_cats = m.n_cats
    img_ids = sorted(m.img_ids)
    n_gt = np.zeros((n_cats, len(img_ids)), np.int32)
    cols: dict[str, list] = {"cat": [], "img": [], "score": [], "tp": [], "ignored": []}
    if m.E is None:  # no detection at all: only the true boxes count
        iou = np.linspace(0.5, 0.95, 10)  # pycocotools' Params.iouThrs
        cat = split.class_index()
        page = {iid: i for i, iid in enumerate(img_ids)}
        for a in split.annotations:
            n_gt[cat[a.category_id], page[a.image_id]] += 1
    else:
        E, n = m.E, len(img_ids)
        iou, n_area, max_det = np.asarray(E.params.iouThrs), len(E.params.areaRng), E.params.maxDets[-1]
        bits = 1 << np.arange(len(iou), dtype=np.int64)
        for k in range(n_cats):
            for i in range(n):
                e = E.evalImgs[k * n_area * n + i]  # area range "all" comes first
                if e is None:
                    continue
                n_gt[k, i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                scores = np.asarray(e["dtScores"], float)[:max_det]
                if not scores.size:
                    continue
                matched = np.asarray(e["dtMatches"])[:, :max_det] > 0
                ignored = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
                cols["cat"].append(np.full(scores.size, k))
                cols["img"].append(np.full(scores.size, i))
                cols["score"].append(scores)
                cols["tp"].append(bits @ matched)
                cols["ignored"].append(bits @ ignored)
    flat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    return {
        "img_ids": np.asarray(img_ids, np.int64),
        "iou": np.asarray(iou, float),
        "n_gt": n_gt,
        "cat": flat["cat"].astype(np.int32),
        "img": flat["img"].astype(np.int32),
        "score": flat["score"].astype(np.float64),
        "tp": flat["tp"].astype(np.int64),
        "ignored": flat["ignored"].astype(np.int64),
    }


def resampled_ap(pm: dict[str, np.ndarray], weights: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` (mAP50 or mAP50-95) of the page matches ``pm`` when page i counts ``weights[b, i]`` times (a
    bootstrap resample's counts), for every row b: pycocotools' ``accumulate`` (101-point interpolated precision,
    averaged over IoU thresholds and over the categories that have true boxes) in closed form. Equal to
    :meth:`evaluation.metrics.CocoMatch.resampled_map` on the same resample, up to the order of detections with
    exactly equal scores (a repeated page's detections are one weighted step here, copies one after another there:
    the same curve).

    The interpolated precision at recall r is the best precision at any true positive reaching recall r (a false
    positive never raises it), so the curve is only needed at the true positives: there, the true and false
    positives counted so far are page-count matrices times the weights (one matrix product for all resamples).
    """
    if metric not in RANK_METRICS:
        raise ConfigError(f"rank_by={metric!r}: valid values are {list(RANK_METRICS)}")
    W = np.atleast_2d(np.asarray(weights, float))
    n_pages = W.shape[1]
    thresholds = [0] if metric == "mAP50" else range(len(pm["iou"]))
    recall_grid = np.linspace(0.0, 1.0, 101)  # pycocotools' Params.recThrs
    total, n_valid = np.zeros(len(W)), np.zeros(len(W))
    for k in range(pm["n_gt"].shape[0]):
        npig = W @ pm["n_gt"][k]
        valid = np.flatnonzero(npig > 0)
        sel = np.flatnonzero(pm["cat"] == k)
        order = sel[np.argsort(-pm["score"][sel], kind="mergesort")]  # pycocotools' sort, ties in page order
        for t in thresholds:
            keep = order[((pm["ignored"][order] >> t) & 1) == 0]  # ignored: neither true nor false
            page, tp = pm["img"][keep], ((pm["tp"][keep] >> t) & 1).astype(bool)
            at = np.flatnonzero(tp)  # the true positives, in score order
            if not at.size:
                continue  # precision 0 at every recall
            # per true positive: each page's true positives up to it, and its false positives before it
            tp_pages = np.zeros((at.size, n_pages))
            tp_pages[np.arange(at.size), page[at]] = 1.0
            fp = np.flatnonzero(~tp)
            cell = np.searchsorted(at, fp) * n_pages + page[fp]  # (the next true positive, page)
            fp_pages = np.bincount(cell, minlength=(at.size + 1) * n_pages).reshape(at.size + 1, n_pages)
            tp_sum = W @ np.cumsum(tp_pages, axis=0).T
            fp_sum = W @ np.cumsum(fp_pages[:-1], axis=0, dtype=float).T
            with np.errstate(invalid="ignore", divide="ignore"):
                rc = tp_sum / npig[:, None]
            pr = tp_sum / (tp_sum + fp_sum + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the precision envelope
            for b in valid:
                idx = np.searchsorted(rc[b], recall_grid, side="left")
                total[b] += pr[b, idx[idx < at.size]].sum() / len(recall_grid)
        n_valid[valid] += len(thresholds)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_valid > 0, total / np.maximum(n_valid, 1), np.nan)


def rank_of(values) -> np.ndarray:
    """Competition ranks, best (highest) first: 1 + how many are strictly better; NaN ranks last; along axis 0."""
    v = np.nan_to_num(np.asarray(values, float), nan=-np.inf)
    return 1 + (v[None, :] > v[:, None]).sum(axis=1)


def rank_stability(matches: list[list[dict]], ranks, metric: str, n_resamples: int, seed: int) -> np.ndarray:
    """How often each model keeps its table rank when test pages and seeds are resampled.

    Args:
        matches: per model, the :func:`page_matches` of each of its seeds (all on the same pages).
        ranks: each model's rank in the table.
        metric: the table's sort metric (mAP50 or mAP50-95), higher is better.
        n_resamples: resamples; each picks one seed per model at random and one bootstrap resample of the pages,
            the same pages for every model, and ranks the models by ``metric`` on it.
        seed: the random generator's seed.

    Returns:
        Per model, the fraction of resamples in which its rank equals ``ranks``.
    """
    ids = matches[0][0]["img_ids"]
    if any(not np.array_equal(pm["img_ids"], ids) for runs in matches for pm in runs):
        raise UserError(
            "rank stability: the models were evaluated on different pages (another data= or split)"
        )
    rng = np.random.default_rng(seed)
    n = len(ids)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_resamples)])
    picks = [rng.integers(0, len(runs), n_resamples) for runs in matches]
    values = np.full((len(matches), n_resamples), np.nan)
    for m, runs in enumerate(matches):
        for s, pm in enumerate(runs):
            rows = np.flatnonzero(picks[m] == s)
            if rows.size:
                values[m, rows] = resampled_ap(pm, counts[rows], metric)
    held = rank_of(values) == np.asarray(ranks)[:, None]
    return held.mean(axis=1)


def save_matches(path: Path, pm: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **pm)
    return path


def load_matches(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:  # numbers only: nothing in it can execute
        return {k: z[k] for k in z.files}


# -- one model, one seed -------------------------------------------------------------------------------------
def count_gflops(detector, imgsz: int) -> float | None:
    """Forward GFLOPs of the detector's traceable module (:meth:`export_spec`) on one ``imgsz`` page, batch 1,
    counted by torch's FlopCounterMode (convolutions, matmuls, attention; 2 FLOPs per multiply-add, as ultralytics
    reports them). None, with a warning, where the module cannot run under the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        spec = detector.export_spec(imgsz)
        inputs = type(detector).example_inputs(spec.imgsz, spec.options)
        with torch.no_grad(), counter:
            spec.module(*inputs)
    except (
        NotImplementedError,
        RuntimeError,
        AssertionError,
    ) as e:  # no traceable module, an op it cannot count
        log.warning("GFLOPs of %s not counted: %s", detector.checkpoint, first_line(e))
        return None
    return counter.get_total_flops() / 1e9


def _trained(cfg: DictConfig, name: str, seed: int, backend: str, out_dir: Path, data_overrides: list[str]):
    """Train ``name`` at ``seed`` in ``out_dir/run`` (a subprocess: one model's crash stays its own) unless it is
    there; returns its metrics, its checkpoint and the evaluation settings it was scored with."""
    run_dir = out_dir / "run"
    if not (run_dir / "metrics.json").is_file():
        cmd = _training_command(cfg, name, seed, backend, run_dir, data_overrides)
        log.info("%s: %s", name, " ".join(cmd))
        with open(out_dir / "train.log", "a", encoding="utf-8") as logf:
            r = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, check=False)
        if r.returncode != 0:
            raise UserError(f"training {name} failed (exit {r.returncode}); see {out_dir / 'train.log'}")
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    # the pages are predicted again for their matches, with the settings the run was evaluated with
    run_eval = OmegaConf.load(run_dir / "config.yaml").evaluation
    return run_metrics["metrics"], run_metrics["provenance"]["checkpoint"], run_eval


def run_model(
    cfg: DictConfig, name: str, out_dir: Path, data_overrides: list[str], page: np.ndarray, seed: int
) -> dict:
    """Train at ``seed`` (or take the given checkpoint), evaluate and time one model; writes and returns its
    result (``out_dir/result.json``) and its per-page matches (``out_dir/matches.npz``)."""
    from evaluation.evaluator import evaluate_detector, predict_split

    result_file = out_dir / "result.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("data_overrides") != data_overrides:
            raise UserError(
                f"{result_file}: done with data {done.get('data_overrides')} but this run asks for {data_overrides}; "
                f"use another name=... for another dataset"
            )
        log.info("%s (seed %d): done already, skipping", name, seed)
        return done
    backend = _model_backend(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = load_dataset(cfg.data, [cfg.split])[cfg.split]
    ckpt = (cfg.checkpoints or {}).get(name)
    metrics = run_eval = None
    if ckpt is None:
        metrics, ckpt, run_eval = _trained(cfg, name, seed, backend, out_dir, data_overrides)
    load = functools.partial(get_backend(backend).from_checkpoint, ckpt, cfg.evaluation.decode[backend])
    # each latency column on the device it names, whatever device the backend would pick by itself (CUDA when
    # it is there): the CPU column on a GPU VM must not time the GPU
    detector = load(device="cpu", run_dir=out_dir)
    scorer = load(run_dir=out_dir) if torch.cuda.is_available() else detector  # scored where it is fastest
    if metrics is None:
        res, preds = evaluate_detector(scorer, split, cfg.evaluation)
        metrics = {f"{cfg.split}/{k}": v for k, v in res.metrics.items()}
    else:
        conf_min, imgsz, batch = float(run_eval.conf_min), run_eval.imgsz, int(run_eval.batch)
        preds = predict_split(scorer, split, conf_min, imgsz, batch)
    pm = page_matches(split, preds)
    for key in RANK_METRICS:  # the same numbers from both sides, or the resampling would rank other models
        again, reported = (
            float(resampled_ap(pm, np.ones(len(pm["img_ids"])), key)[0]),
            metrics.get(f"{cfg.split}/{key}"),
        )
        if reported is not None and np.isfinite(again) and abs(again - reported) > 1e-3:
            log.warning("%s: %s %.4f from the re-predicted pages, %.4f reported", name, key, again, reported)
    save_matches(out_dir / MATCHES, pm)
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
        "seed": seed,
        "backend": backend,
        "checkpoint": str(ckpt),
        "params": detector.num_parameters(),
        "gflops": count_gflops(detector, int(cfg.latency.imgsz)),
        "data_overrides": data_overrides,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(f"{cfg.split}/")},
        "latency": latency,
        **extra,
    }
    result_file.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


# -- the table -----------------------------------------------------------------------------------------------
def _median_of(dicts: list[dict]) -> dict:
    """Per key, the median over ``dicts`` (latencies of one model's seeds: the same network, other weights)."""
    return {k: float(np.median([d[k] for d in dicts if k in d])) for k in dicts[0]}


def aggregate(runs: list[dict], meta: dict, split: str) -> dict:
    """One model's row from its seeds' results: metrics averaged over the seeds (one seed: its metrics and
    bootstrap intervals as they are), the spread of each headline metric, latencies as the median over seeds, its
    licences and published parameter count (:func:`model_meta`), and the seeds' own results under ``runs``."""
    first = runs[0]
    row = {
        "model": first["model"],
        "backend": first["backend"],
        "seeds": [r["seed"] for r in runs],
        "checkpoint": first["checkpoint"],
        "params": first["params"],
        "gflops": first["gflops"],
        "licence": meta["licence"],
        "params_m": meta["params_m"],
        "metrics": mean_over_seeds([r["metrics"] for r in runs]),
        "spread": {
            f"{split}/{k}": spread([r["metrics"].get(f"{split}/{k}") for r in runs]) for k in HEADLINE
        },
        "latency": _median_of([r["latency"] for r in runs]),
    }
    gpu = [r["latency_gpu"] for r in runs if "latency_gpu" in r]
    if gpu:
        row["latency_gpu"] = _median_of(gpu)
    return row | {"runs": runs}


def rank_rows(results: list[dict], split: str, rank_by: str) -> None:
    """Each row's ``rank`` in the table: by ``rank_by`` (its mean over seeds), best first, ties share a rank."""
    ranks = rank_of([r["metrics"].get(f"{split}/{rank_by}") for r in results])
    for r, k in zip(results, ranks, strict=True):
        r["rank"] = int(k)


def _licence_cell(licence: dict) -> str:
    return " / ".join(str(licence[k] or "unknown") for k in ("code", "weights"))


def selection_rows(results: list[dict], split: str) -> list[dict[str, str]]:
    """The table: one row per model (``aggregate``), best rank first."""
    rows = []
    many = any(len(r["seeds"]) > 1 for r in results)
    for r in sorted(results, key=lambda x: x["rank"]):
        lat = r["latency"]
        row = {
            "rank": str(r["rank"]),
            "model": r["model"],
            "licence (code / weights)": _licence_cell(r["licence"]),
            "params (M)": f"{r['params'] / 1e6:.1f}",
            "GFLOPs": fmt_num(r["gflops"], 1),
            "CPU ms (model, p50)": f"{lat['model/p50_ms']:.1f}",
            "CPU ms (end-to-end, p50)": f"{lat['e2e/p50_ms']:.1f}",
        }
        if any("latency_gpu" in x for x in results):
            gpu = r.get("latency_gpu")
            row["GPU ms (model, p50)"] = f"{gpu['model/p50_ms']:.2f}" if gpu else "n/a"
            row["GPU ms (end-to-end, p50)"] = f"{gpu['e2e/p50_ms']:.2f}" if gpu else "n/a"
        if many:
            row["seeds"] = ", ".join(str(s) for s in r["seeds"])
        runs = [x["metrics"] for x in r["runs"]]
        for k in HEADLINE:
            row[k] = fmt_over_seeds(runs, f"{split}/{k}")
        stability = r.get("rank_stability")
        row["rank stability"] = "n/a" if stability is None else f"{stability:.2f}"
        rows.append(row)
    return rows


def highlights(results: list[dict], split: str) -> dict[str, str]:
    """Best mAP50, best mAP50-95 (means over seeds) and fastest model; ties are named as ties, not broken by list
    order."""

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
        s = r["spread"][f"{split}/mAP50-95"]
        if s["n"] > 1:  # the seeds' range around their mean
            ax.errorbar(x, y, yerr=[[y - s["min"]], [s["max"] - y]], fmt="o", ms=4, capsize=3)
        else:
            ax.scatter(x, y, s=25)
        ax.annotate(r["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(
        xscale="log",  # latencies span two orders of magnitude
        xlabel="CPU latency, model only, p50 (ms, log scale)",
        ylabel=f"{split} mAP50-95 (mean and range over seeds)",
        title="Model selection: latency vs accuracy",
    )
    return save_figure(fig, path, ax)


def write_selection(
    run_dir: Path, results: list[dict], split: str, env: dict, data_name: str, settings: dict
) -> tuple[list[dict[str, str]], str]:
    """Write ``model_selection.{md,csv,json,png}`` of the ranked rows (:func:`aggregate`, :func:`rank_rows`);
    ``settings``: ``rank_by``, ``rank_resamples``, ``licence`` and ``gflops_imgsz`` for the notes. Returns the
    table's rows and the Markdown."""
    rows = selection_rows(results, split)
    hl = highlights(results, split)
    seeds = sorted({s for r in results for s in r["seeds"]})
    note = (
        f"Data: {data_name}, split {split}; CPU: {env['cpu']} ({results[0]['latency'].get('threads', env['torch_threads']):.0f} torch threads); "
        f"torch {env['version/torch']}; latency at batch 1 per the protocol of evaluation/latency.py "
        f"(the median over a model's seeds); GFLOPs: one forward pass at {settings['gflops_imgsz']} px "
        "(torch FlopCounterMode)."
    )
    if len(seeds) == 1:
        accuracy = f"Accuracy: training seed {seeds[0]}; the value and its 95% bootstrap interval over pages."
    else:
        accuracy = (
            f"Accuracy: training seeds {', '.join(map(str, seeds))}; mean ± standard deviation (n - 1) [min, max] "
            "over a model's seeds (a model evaluated once: its value and 95% bootstrap interval over pages)."
        )
    accuracy += (
        f" Rows ranked by {split} {settings['rank_by']} (mean over seeds); rank stability: the fraction of "
        f"{settings['rank_resamples']} resamples (one seed per model at random and a bootstrap resample of the "
        f"{split} pages) in which the model keeps its rank."
    )
    if settings.get("licence"):
        accuracy += " Only rows whose code and weights are permissively licensed (Apache-2.0, MIT, BSD-*)."
    md = markdown_table(rows, f"# Model selection\n\n{note}\n\n{accuracy}\n") + "\n"
    md += "\n".join(f"- **{k}**: {v}" for k, v in hl.items()) + "\n"
    (run_dir / "model_selection.md").write_text(md, encoding="utf-8")
    write_csv(run_dir / "model_selection.csv", rows)
    doc = {
        "environment": env,
        "split": split,
        "data": data_name,
        "settings": settings,
        "highlights": hl,
        "results": results,
    }
    (run_dir / "model_selection.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    scatter(results, split, run_dir / "model_selection.png")
    return rows, md


def _model_dir(run_dir: Path, model) -> Path:
    """Where one model's seeds live."""
    return run_dir / "models" / str(model).replace("/", "__")


def _seed_dir(run_dir: Path, model, seed: int) -> Path:
    """Where one (model, seed)'s run, result.json, matches.npz and claim live."""
    return _model_dir(run_dir, model) / f"seed_{seed}"


def _licensed_models(cfg: DictConfig) -> tuple[dict, list[str]]:
    """Each model's licence and size (its config file), and the models ``licence=`` keeps, in order."""
    meta = {str(m): model_meta(str(m)) for m in cfg.models}
    models = [m for m in map(str, cfg.models) if keeps_licence(meta[m]["licence"], cfg.licence)]
    for m in sorted(set(map(str, cfg.models)) - set(models)):
        log.info("licence=%s: %s left out (%s)", cfg.licence, m, _licence_cell(meta[m]["licence"]))
    if not models:
        raise UserError(
            f"licence={cfg.licence}: none of the models {list(cfg.models)} is permissively licensed"
        )
    return meta, models


def _finished(run_dir: Path, models: list[str], seeds_of: dict, meta: dict, split: str):
    """Every finished (model, seed), this worker's and the others', in the configured order: one aggregated row
    per model and the per-page matches of each of its seeds (None where a run has none)."""
    results, matches = [], []
    for m in models:
        dirs = [d for s in seeds_of[m] if ((d := _seed_dir(run_dir, m, s)) / "result.json").is_file()]
        if dirs:
            results.append(
                aggregate([json.loads((d / "result.json").read_text()) for d in dirs], meta[m], split)
            )
            matches.append([load_matches(d / MATCHES) if (d / MATCHES).is_file() else None for d in dirs])
    return results, matches


def model_selection(cfg: DictConfig) -> None:
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    pin_device(cfg.devices, worker_index())  # before anything touches CUDA
    seeds = training_seeds(cfg)
    if cfg.rank_by not in RANK_METRICS:
        raise ConfigError(f"rank_by={cfg.rank_by!r}: valid values are {list(RANK_METRICS)}")
    meta, models = _licensed_models(cfg)
    # a given checkpoint is one trained model: evaluated once, whatever the seeds
    seeds_of = {m: seeds[:1] if m in (cfg.checkpoints or {}) else seeds for m in models}
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
    work = [(m, s) for m in models for s in seeds_of[m]]
    for m, s in progress(work, "model selection", unit="run"):
        out_dir = _seed_dir(run_dir, m, s)
        if not (out_dir / "result.json").is_file() and not claim(out_dir):
            busy.append(f"{m} (seed {s})")  # another worker (SIGDET_WORKER=k) is on it
            continue
        try:
            run_model(cfg, m, out_dir, data_overrides, page, s)
        except UserError as e:
            # one model's failure does not stop a day-long selection; it is retried next run
            log.error("%s", e)
            failed.append(f"{m} (seed {s})")
        finally:
            release(out_dir)
    split = str(cfg.split)
    results, matches = _finished(run_dir, models, seeds_of, meta, split)
    if not results:
        raise UserError(f"no model finished; failed: {failed}, running in other workers: {busy}")
    rank_rows(results, split, str(cfg.rank_by))
    if any(pm is None for runs in matches for pm in runs):
        log.warning(
            "rank stability: n/a (a finished run has no %s; delete its result.json to redo it)", MATCHES
        )
    elif int(cfg.rank_resamples) > 0:
        ranks = [r["rank"] for r in results]
        held = rank_stability(
            matches, ranks, str(cfg.rank_by), int(cfg.rank_resamples), int(cfg.evaluation.seed)
        )
        for r, h in zip(results, held, strict=True):
            r["rank_stability"] = float(h)
    settings = {
        "seeds": seeds,
        "rank_by": str(cfg.rank_by),
        "rank_resamples": int(cfg.rank_resamples),
        "licence": cfg.licence,
        "gflops_imgsz": size,
    }
    rows, md = write_selection(run_dir, results, split, environment(), str(cfg.data.name), settings)
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
