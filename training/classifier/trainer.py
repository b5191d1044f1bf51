"""Two-stage progressive transfer learning and hard-negative mining for the region classifier.

Phases, in order: ``stage1`` (backbone frozen, head trained), ``stage2`` (everything, lower lr), then per mining
round ``mine<k>`` (the model runs over the training pool, every misclassified crop is augmented ``k`` times and
added, training continues as in stage 2). Each phase stops early on the validation monitor, restores its best
epoch and is saved as ``weights/<phase>.pt``; ``resume=true`` skips the phases already saved (mining is
deterministic given the weights and the seed, so it is recomputed).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from training.classifier.crops import Crop, as_kind, build_crop_splits, class_counts
from training.classifier.model import RegionClassifier, build_classifier, preprocess
from training.cli import DataError
from training.hardware import resolve_device
from training.loops import fit, train_one_epoch
from training.progress import progress

log = logging.getLogger(__name__)

# (y_true, y_pred, classes) -> metrics without split prefix (accuracy, macro_f1, ...): injected by the entry point
ValidateFn = Callable[[np.ndarray, np.ndarray, list[str]], dict[str, float]]
COUNT_COLUMNS = ("original", "augmented", "misclassified", "augmented_misclassified", "total")


def augmenter(aug_cfg):
    """Augmentation for ink on paper: small rotation and scale on a white fill, colour / contrast jitter, blur."""
    from torchvision.transforms import v2

    a = aug_cfg  # train.augment (conf/trainer/classifier.yaml; its schema guarantees every key)
    ops = [
        v2.RandomAffine(
            degrees=float(a.rotation),
            scale=tuple(a.scale),
            translate=(float(a.translate),) * 2,
            fill=255,  # paper, not black borders
        ),
        v2.ColorJitter(
            brightness=float(a.brightness),
            contrast=float(a.contrast),
            saturation=float(a.saturation),
            hue=float(a.hue),
        ),
    ]
    if float(a.blur_p) > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(5, sigma=tuple(a.blur_sigma))], p=float(a.blur_p)))
    return v2.Compose(ops)


def augment_copies(crops: list[Crop], k: int, aug, seed: int, kind: str) -> list[Crop]:
    """``k`` augmented copies of every crop (exactly ``len(crops) * k``), reproducible from ``seed``."""
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for c in crops:
            for _ in range(k):
                im = aug(Image.fromarray(c.image))
                out.append(Crop(np.asarray(im), c.label, c.source, c.ref, kind))
    return out


class _CropDataset(torch.utils.data.Dataset):
    def __init__(self, crops: list[Crop], aug=None):
        self.crops, self.aug = crops, aug

    def __len__(self):
        return len(self.crops)

    def __getitem__(self, i):
        c = self.crops[i]
        im = Image.fromarray(c.image)
        return (self.aug(im) if self.aug is not None else im), c.label


def _loader(crops, model: RegionClassifier, batch: int, aug, seed: int, workers: int = 0):
    def collate(items):
        ims, labels = zip(*items, strict=True)
        return preprocess(list(ims), model.imgsz, model.normalize), torch.tensor(labels)

    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        _CropDataset(crops, aug),
        batch_size=batch,
        shuffle=True,
        collate_fn=collate,
        generator=g,
        num_workers=workers,
    )


def _step(model, batch, device):
    x, y = batch
    return F.cross_entropy(model(x.to(device)), y.to(device))


def predict_labels(
    model: RegionClassifier, crops: list[Crop], batch: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) of ``crops``."""
    probs = model.predict_proba([c.image for c in crops], batch)
    return np.asarray([c.label for c in crops], int), probs.argmax(1) if len(probs) else np.zeros(0, int)


def mine(model: RegionClassifier, pool: list[Crop], k: int, aug, seed: int, batch: int = 64):
    """Hard negatives: the crops of ``pool`` the model gets wrong, and ``k`` augmented copies of each."""
    y, p = predict_labels(model, pool, batch)
    wrong = [c for c, yi, pi in zip(pool, y, p, strict=True) if yi != pi]
    return wrong, augment_copies(wrong, k, aug, seed, "mined")


class PhaseRunner:
    """Trains one phase through :func:`training.loops.fit` (early stopping on the validation monitor) and
    restores the phase's best epoch; the tracker's step runs on across phases."""

    def __init__(self, model, val: list[Crop], t, device, validate: ValidateFn | None, tracker, classes):
        self.model, self.val, self.t, self.device = model, val, t, device
        self.validate, self.tracker, self.classes = validate, tracker, classes
        self.epoch = 0  # global, across phases (the tracker's step)
        self.history: list[dict] = []

    def val_metrics(self) -> dict[str, float]:
        y, p = predict_labels(self.model, self.val)
        m = self.validate(y, p, self.classes) if self.validate else {"accuracy": float(np.mean(y == p))}
        return {f"val/{k}": float(v) for k, v in m.items() if np.isscalar(v)}

    def run(self, name: str, train: list[Crop], stage, aug, seed: int):
        epochs, lr, weight_decay = int(stage["epochs"]), float(stage["lr"]), float(stage["weight_decay"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        loader = _loader(train, self.model, int(self.t.batch), aug, seed, int(self.t.workers))
        best: dict = {}

        def train_epoch(_left):
            with progress(loader, f"{name} train", len(loader), "batch") as batches:
                out = train_one_epoch(
                    self.model, opt, batches, self.device, _step, max_steps=self.t.max_steps
                )
            sched.step()
            return {**out, "lr": lr}

        def snapshot(_st) -> None:
            best["state"] = copy.deepcopy(self.model.state_dict())

        st = fit(
            train_epoch,
            self.val_metrics,
            epochs=epochs,
            monitor=str(self.t.monitor),
            mode="max",
            patience=int(self.t.patience),
            on_best=snapshot,
            tracker=self.tracker,
            step0=self.epoch,
            name=name,
        )
        self.epoch += st.epoch
        self.history += st.history
        if "state" in best:
            self.model.load_state_dict(best["state"])
        return st.best


@dataclass
class ClassifierRun:
    """What a training run leaves for its evaluation (``evaluation.classification.evaluate_classifier_run``)."""

    model: RegionClassifier
    crops: dict  # split -> list[Crop]
    pages: dict  # split -> held-out generated pages (the pipeline end to end)
    base: RegionClassifier | None  # the model before hard-negative mining, when mining changed it
    weights_note: str
    counts: dict  # class -> training-crop counts (COUNT_COLUMNS)
    metrics: dict[str, float]


@dataclass
class _Phases:
    """Runs one phase of a training run (or, with ``resume``, loads it when already saved) and saves it as
    ``weights/<name>.pt``."""

    model: RegionClassifier
    runner: PhaseRunner
    weights: Path
    resume: bool
    device: object
    aug: object
    seed: int

    def __call__(self, name: str, stage: dict, train: list[Crop], k: int) -> None:
        """Train phase ``name`` on ``train`` with ``stage``'s settings and seed ``seed + k``, then save it."""
        path = self.weights / f"{name}.pt"
        if self.resume and path.exists():
            from training.checkpoints import load_weights

            state = load_weights(path, "classifier checkpoint (resume)", self.device)
            if not isinstance(state, dict) or "state_dict" not in state:
                raise DataError(f"{path}: not a classifier checkpoint written by this run (no state_dict)")
            self.model.net.load_state_dict(state["state_dict"])
            log.info("resume: %s loaded from %s", name, path)
            return
        self.runner.run(name, train, stage, self.aug, self.seed + k)
        self.model.save(path)


def _initial_train_set(
    train_crops: list[Crop], classes: list[str], n_copies: int, aug, seed: int
) -> tuple[list[Crop], list[Crop], dict]:
    """The training set before mining (the original crops, then ``n_copies`` augmented copies of each), the
    copies, and the per-class count table (class -> COUNT_COLUMNS) started with both."""
    original = as_kind(train_crops, "original")
    augmented = augment_copies(original, n_copies, aug, seed, "augmented")
    counts = {c: dict.fromkeys(COUNT_COLUMNS, 0) for c in classes}
    _add_counts(counts, "original", original)
    _add_counts(counts, "augmented", augmented)
    return original + augmented, augmented, counts


def _mining_rounds(
    phases: _Phases, t, train_set: list[Crop], counts: dict, tracker
) -> tuple[list[Crop], int]:
    """Hard-negative mining rounds (``t.mining``), each retraining as in stage 2 on the grown set; returns the
    final training set and the number of rounds that retrained the model."""
    mining = t.mining
    rounds, k = int(mining.rounds), int(mining.k)
    retrain = {
        "epochs": mining.epochs,
        "lr": mining.lr,
        "weight_decay": t.stage2.weight_decay,
    }
    mined_rounds = 0
    for r in range(1, rounds + 1):
        wrong, new = mine(phases.model, train_set, k, phases.aug, phases.seed + 100 * r)
        _add_counts(counts, "misclassified", wrong)
        _add_counts(counts, "augmented_misclassified", new)
        log.info(
            "mining round %d: %d misclassified of %d, %d crops added", r, len(wrong), len(train_set), len(new)
        )
        tracker.log_metrics({f"mining/round{r}/misclassified": float(len(wrong))}, step=phases.runner.epoch)
        train_set = train_set + new
        if not new:
            log.info("mining round %d: nothing misclassified, stopping", r)
            break
        phases(f"mine{r}", retrain, train_set, 2 + r)
        mined_rounds += 1
    return train_set, mined_rounds


def _run_metrics(counts: dict, epochs: int, n_train: int) -> dict[str, float]:
    """Fill the count table's ``total`` column and return the run's metrics (epochs, crops, counts)."""
    for c in counts:
        # the training set's size: a misclassified crop is already in it, only its copies are new
        counts[c]["total"] = (
            counts[c]["original"] + counts[c]["augmented"] + counts[c]["augmented_misclassified"]
        )
    metrics: dict[str, float] = {"train/epochs": float(epochs), "train/crops": float(n_train)}
    for c in counts:
        for col in COUNT_COLUMNS:
            metrics[f"counts/{c}/{col}"] = float(counts[c][col])
    return metrics


def train_classifier(cfg, run_dir: Path, tracker, validate: ValidateFn | None = None) -> ClassifierRun:
    """Run the training pipeline of ``python -m training experiment=classifier_two_stage`` (see module
    docstring); ``validate(y_true, y_pred, classes) -> metrics`` is the per-epoch monitor (injected)."""
    t = cfg.train
    classes = list(cfg.model.classes)
    seed = int(cfg.seed)
    device = resolve_device(t.device)
    model, weights_note = build_classifier(cfg.model)
    model.to(device)
    crops, pages = build_crop_splits(cfg.crops, cfg.get("data"), classes)
    aug = augmenter(t.augment)
    train_set, augmented, counts = _initial_train_set(
        crops["train"], classes, int(t.augment.copies), aug, seed
    )
    log.info(
        "classifier: %d train crops (%d augmented), %d val, %d test; weights: %s",
        len(train_set),
        len(augmented),
        len(crops["val"]),
        len(crops["test"]),
        weights_note,
    )

    weights = run_dir / "weights"
    runner = PhaseRunner(model, crops["val"], t, device, validate, tracker, classes)
    phase = _Phases(model, runner, weights, bool(cfg.resume), device, aug, seed)
    model.freeze_backbone()
    phase("stage1", t.stage1, train_set, 1)
    model.unfreeze()
    phase("stage2", t.stage2, train_set, 2)
    base = copy.deepcopy(model).cpu()
    model.save(weights / "base.pt")
    train_set, mined_rounds = _mining_rounds(phase, t, train_set, counts, tracker)
    model.save(weights / "best.pt")
    metrics = _run_metrics(counts, runner.epoch, len(train_set))
    _write_history(run_dir, runner.history)
    return ClassifierRun(
        model.cpu(),
        crops,
        pages,
        base if mined_rounds else None,  # "before vs after mining" only when mining changed the model
        weights_note,
        counts,
        metrics,
    )


def _add_counts(counts: dict, col: str, crops: list[Crop]) -> None:
    """Add the per-class numbers of ``crops`` to column ``col`` of ``counts`` (class -> column -> count)."""
    for c, n in zip(counts, class_counts(crops, len(counts)), strict=True):
        counts[c][col] += n


def _write_history(run_dir: Path, history: list[dict]) -> None:
    import csv

    if not history:
        return
    cols = list(dict.fromkeys(k for row in history for k in row))
    with open(run_dir / "history.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(history)
