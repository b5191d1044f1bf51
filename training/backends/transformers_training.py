"""Training of the transformers backend (:class:`TransformersTrainer`); the detector
(:class:`~training.backends.transformers.TransformersDetector`) holds loading, prediction and export.

Training is a plain loop (``training.loops``) on ``accelerate``: one process, or DDP under ``torchrun`` /
``accelerate launch`` (gloo on CPUs), mixed precision (``train.precision``), gradient accumulation, with
checkpoints, resume, early stopping on the configured metric and gradient clipping. Periodic validation goes
through the injected validator (our evaluator) on the main process, so ``val/mAP50`` means the same for a DETR and
a YOLO; checkpoints and tracking are the main process's too, in the same format whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from training.backends.base import Trainer
from training.backends.hf_processing import boxes_to_targets, preprocess_image
from training.backends.transformers import BOX_FRAME, FAMILIES, STATE, HFFamily, check_input_size
from training.cli import ConfigError, UserError
from training.compat.accelerate import reset_state as reset_accelerate_state
from training.compat.transformers import box_count_summed
from training.data import load_dataset
from training.data.images import load_rgb
from training.data.schema import DetectionSplit
from training.fileio import recover_dir
from training.hardware import resolve_device
from training.loops import (
    FitState,
    evaluate_loss,
    fit,
    launcher_rank,
    rng_state,
    set_rng_state,
    train_one_epoch,
)
from training.progress import progress

log = logging.getLogger(__name__)


PRECISIONS = ("no", "fp16", "bf16")
# how long a rank waits in a collective: the others wait while the main process runs the evaluator on val
DIST_TIMEOUT = datetime.timedelta(hours=1)


def precision_of(t, device: torch.device) -> str:
    """accelerate's ``mixed_precision`` for ``cfg.train`` on ``device``: ``train.precision`` when set (no, fp16 or
    bf16), else what ``train.amp`` always meant (fp16 on CUDA when true, full precision elsewhere).

    Raises:
        ConfigError: an unknown precision, or fp16 asked for on the CPU.
    """
    if t.precision is None:
        return "fp16" if t.amp and device.type == "cuda" else "no"
    value = str(t.precision).strip().lower()
    value = "no" if value in ("false", "none") else value  # YAML 1.1 reads a bare `no` as false
    if value not in PRECISIONS:
        raise ConfigError(f"train.precision={t.precision!r}: valid values are null, {', '.join(PRECISIONS)}")
    if value == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU; on the CPU use train.precision=bf16 or no")
    return value


def _accelerator(t):
    """The run's ``accelerate.Accelerator``: DDP when a launcher started this process (gloo when
    ``train.device`` resolves to the CPU, e.g. on a machine without a GPU), else one process on ``train.device``.

    Device placement is ours (:func:`_train_device`), so that ``train.device=cuda:1`` keeps its meaning.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    grad_accum = int(t.grad_accum)
    if grad_accum < 1:
        raise ConfigError(
            f"train.grad_accum={grad_accum}: the number of batches per optimizer step, 1 or more"
        )
    want = resolve_device(t.device)
    launched = launcher_rank()[1] > 1
    # accelerate's state is process-wide and refuses a change of device or precision: a new run (a sweep's next
    # trial, a test) starts from a clean one (accelerate's own tests reset it so); a launcher's process group stays
    reset_accelerate_state(partial=not launched)
    return Accelerator(
        cpu=want.type == "cpu",
        mixed_precision=precision_of(t, want),
        gradient_accumulation_steps=grad_accum,
        device_placement=False,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=DIST_TIMEOUT),
            # as the transformers Trainer does: some layers go unused (Conditional-DETR's query_scale with one
            # decoder layer, YOLOS's mid position embeddings with one encoder layer) and DDP would stop there
            DistributedDataParallelKwargs(find_unused_parameters=True),
        ],
    )


def _train_device(t, acc) -> torch.device:
    """``train.device`` for one process; under a launcher the rank's own device, as accelerate assigned it."""
    if acc.num_processes == 1:
        return resolve_device(t.device)
    if t.device not in (None, "", "auto", "cpu"):
        log.info("train.device=%s: under a launcher rank %d uses %s", t.device, acc.process_index, acc.device)
    return acc.device


def _release(acc) -> None:
    """After training: every rank done, the process group (of a launched run) destroyed and accelerate's state
    cleared, so that the main process evaluates alone and the DETR losses no longer average over ranks."""
    acc.wait_for_everyone()
    if acc.num_processes > 1:
        acc.state.destroy_process_group()
    reset_accelerate_state(partial=True)


class _DetectionDataset(torch.utils.data.Dataset):
    """Images of a split, resized / padded to ``imgsz``, with bbox-safe augmentation for training."""

    def __init__(
        self,
        split: DetectionSplit,
        imgsz: int,
        augment: dict | None,
        box_frame: str = BOX_FRAME,
        family: HFFamily = FAMILIES["detr"],
    ):
        self.split, self.imgsz, self.box_frame, self.family = split, imgsz, box_frame, family
        self.index = split.class_index()
        self.tf = self._transforms(augment) if augment else None

    @staticmethod
    def _transforms(a: dict):
        from torchvision.transforms import v2

        tfs = []  # train.augment: every key set by conf/trainer/transformers.yaml (its schema checks)
        if a["rotate_deg"] or a["scale"]:
            lo, hi = a["scale"] or (1.0, 1.0)
            tfs.append(
                v2.RandomAffine(degrees=float(a["rotate_deg"]), scale=(float(lo), float(hi)), fill=255)
            )
        if a["brightness"] or a["contrast"]:
            tfs.append(v2.ColorJitter(brightness=float(a["brightness"]), contrast=float(a["contrast"])))
        if a["blur"]:
            tfs.append(v2.RandomApply([v2.GaussianBlur(3)], p=float(a["blur"])))
        if a["hflip"]:  # documents: a mirrored page is not a page we will meet (0 in the YAML)
            tfs.append(v2.RandomHorizontalFlip(float(a["hflip"])))
        tfs.append(v2.SanitizeBoundingBoxes(min_size=1.0))
        return v2.Compose(tfs)

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, i: int):
        im = self.split.images[i]
        img = load_rgb(im.file)
        anns = self.split.annotations_for(im.id)
        xyxy = np.array(
            [[a.bbox[0], a.bbox[1], a.bbox[0] + a.bbox[2], a.bbox[1] + a.bbox[3]] for a in anns],
            dtype=np.float32,
        ).reshape(-1, 4)
        labels = np.array([self.index[a.category_id] for a in anns], dtype=np.int64)
        if self.tf is not None:
            from torchvision import tv_tensors
            from torchvision.transforms.v2 import functional as F

            boxes = tv_tensors.BoundingBoxes(
                torch.from_numpy(xyxy), format="XYXY", canvas_size=(img.height, img.width)
            )
            out = self.tf({"image": F.to_image(img), "boxes": boxes, "labels": torch.from_numpy(labels)})
            img = F.to_pil_image(out["image"])
            xyxy, labels = out["boxes"].numpy().reshape(-1, 4), out["labels"].numpy()
        pixels, mask, scale = preprocess_image(img, self.imgsz, self.family.resize, self.family.normalize)
        size = img.size if self.box_frame == "image" else None
        return pixels, mask, boxes_to_targets(xyxy, labels, scale, self.imgsz, size)


def _collate(batch):
    pixels, masks, targets = zip(*batch, strict=True)
    return torch.stack(pixels), torch.stack(masks), list(targets)


def _refuse_recipe(cfg) -> None:
    from training.augment import Recipe

    if Recipe.from_cfg(cfg.recipe).active:
        raise ConfigError(
            f"recipe={cfg.recipe.name}: recipes plug into the ultralytics detectors only; use recipe=none "
            "with a transformers model (its augmentation is train.augment in conf/trainer/transformers.yaml)"
        )


def _optimizer(model, t) -> tuple:
    """AdamW over the trainable parameters (the backbone's at ``train.lr_backbone``) and the per-epoch cosine
    schedule of ``train.scheduler=cosine`` (else None)."""
    backbone = [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]
    groups = [{"params": rest, "lr": float(t.lr)}]
    if backbone:
        groups.append({"params": backbone, "lr": float(t.lr_backbone)})
    optimizer = torch.optim.AdamW(groups, weight_decay=float(t.weight_decay))
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(t.epochs), 1))
        if t.scheduler == "cosine"
        else None
    )
    return optimizer, scheduler


def _restore(path: Path, optimizer, scheduler, gen: torch.Generator) -> FitState:
    """An interrupted run's optimizer, schedule and RNG state from its trainer state file; its progress returned."""
    from training.checkpoints import load_weights

    saved = load_weights(path, "trainer state (resume)")
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved.get("scheduler"):
        scheduler.load_state_dict(saved["scheduler"])
    state = FitState(**saved["fit"])
    set_rng_state(saved, gen)
    return state


class _Run:
    """One training's epochs, validation and last-state checkpoint (what ``training.loops.fit`` calls), over the
    prepared (DDP-wrapped) model, optimizer, schedule and loaders."""

    def __init__(self, det, step, acc, model, optimizer, scheduler, loaders, gen, last_dir, grad_clip, state):
        self.det, self.step, self.acc = det, step, acc  # step: the trainer's loss of one batch
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.val_loader, self.val_split = loaders
        self.gen, self.last_dir, self.grad_clip = gen, last_dir, grad_clip
        self.state: FitState | None = state
        self.main = acc.is_main_process
        self.epoch = state.epoch if state else 0

    def train_epoch(self, left) -> dict[str, float]:
        self.epoch += 1
        bar = (
            progress(self.train_loader, f"epoch {self.epoch} train", len(self.train_loader), "batch")
            if self.main
            else contextlib.nullcontext(self.train_loader)
        )
        with bar as batches:
            stats = train_one_epoch(
                self.model,
                self.optimizer,
                batches,
                self.det.device,
                self.step,
                grad_clip=self.grad_clip,
                max_steps=left,
                accelerator=self.acc,
            )
        if self.scheduler is not None:
            self.scheduler.step()
        return {**stats, "lr": self.optimizer.param_groups[0]["lr"]}

    def validate(self) -> dict[str, float]:
        # the val loss on every rank (the DETR losses average their box counts over the processes), the
        # evaluator on the main process; its numbers are broadcast so that every rank decides the same
        from accelerate.utils import broadcast_object_list

        det = self.det
        logs = {"val/loss": evaluate_loss(det.model, self.val_loader, det.device, self.step, self.acc)}
        if det.validator is not None and self.main:
            logs.update({f"val/{k}": v for k, v in det.validator(det, self.val_split).items()})
        (logs,) = broadcast_object_list([logs])
        return logs

    def on_main(self, fn):
        """``fn(state)`` on the main process, every rank waiting for it."""

        def run(st: FitState) -> None:
            if self.main:
                fn(st)
            self.acc.wait_for_everyone()

        return run

    def save_last(self, st: FitState) -> None:
        scheduler_state = self.scheduler.state_dict() if self.scheduler else None
        extra = {"optimizer": self.optimizer.state_dict(), "scheduler": scheduler_state, "fit": st.saved()}
        self.det._save(self.last_dir, {**extra, **rng_state(self.gen)})


class TransformersTrainer(Trainer):
    """Trains a :class:`~training.backends.transformers.TransformersDetector` through ``accelerate`` (one process,
    or one per rank under a launcher), then loads its best weights into the detector on the main process."""

    def _step(self, model, batch, device):
        pixels, masks, targets = batch
        kwargs = {
            "pixel_values": pixels.to(device),
            "labels": [{k: v.to(device) for k, v in t.items()} for t in targets],
        }
        if self.det.use_mask:
            kwargs["pixel_mask"] = masks.to(device)
        return model(**kwargs).loss

    def train(self, cfg) -> dict[str, float]:
        """Train on ``cfg.data`` with ``cfg.train`` (conf/trainer/transformers.yaml) through ``accelerate``.

        One process, or one per rank under ``torchrun`` / ``accelerate launch`` (DDP; ``train.batch`` is per
        process). Validation with the injected evaluator, checkpoints, tracking and logging happen on the main
        process; the monitor value is broadcast, so every rank stops at the same epoch.
        """
        _refuse_recipe(cfg)
        t = cfg.train  # conf/trainer/transformers.yaml; its schema (training/config.py) checks keys and types
        self.det.imgsz = int(t.imgsz)
        acc = _accelerator(t)
        self.det.device = self.det.train_device = _train_device(t, acc)
        self._follow_main_run_dir(acc)
        with acc.main_process_first():  # a data cache is written once, by the main process
            dataset = load_dataset(cfg.data, ("train", "val"))
        self.det.class_names = dataset.class_names
        last_dir, best_dir = self.det.run_dir / "weights" / "last", self.det.run_dir / "weights" / "best"
        run = self._prepare_run(t, acc, dataset, last_dir, bool(cfg.resume))
        monitor, mode = str(t.monitor), str(t.monitor_mode)
        if self.det.validator is None:
            monitor, mode = "val/loss", "min"  # no evaluator injected (API use): fall back to the val loss
        t0, steps0 = time.perf_counter(), run.state.steps if run.state else 0
        with box_count_summed(acc.num_processes):
            st = fit(
                run.train_epoch,
                run.validate,
                epochs=int(t.epochs),
                monitor=monitor,
                mode=mode,
                patience=int(t.patience),
                eval_every=int(t.eval_every),
                max_steps=t.max_steps,
                on_best=run.on_main(lambda _st: self.det._save(best_dir)),
                on_epoch_end=run.on_main(run.save_last),
                tracker=self.det.tracker if run.main else None,
                state=run.state,
                verbose=run.main,  # one line per epoch, not one per process
            )
        # this process's steps (a resumed run's rates exclude the interrupted part)
        steps_done, elapsed = st.steps - steps0, time.perf_counter() - t0
        processes = acc.num_processes
        _release(acc)
        self._end_on_best(run.main, best_dir)
        per_step = int(t.batch) * processes * int(t.grad_accum)  # images per optimizer step, all ranks
        return {
            "train/epochs": float(st.epoch),
            "train/steps": float(steps_done),
            "train/processes": float(processes),
            "train/time_s": elapsed,
            "train/seconds_per_step": elapsed / steps_done if steps_done else math.nan,
            "train/images_per_s": steps_done * per_step / elapsed if elapsed > 0 else math.nan,
            f"train/best_{monitor.replace('/', '_')}": float(st.best) if st.best is not None else math.nan,
            "train/images": float(len(dataset["train"].images)),
            **dataset.skipped_metrics(),
        }

    def _end_on_best(self, main: bool, best_dir: Path) -> None:
        """After training: the main process loads the best weights (the current ones saved as best when training
        saved none); the other ranks stop here (the entry point evaluates on the main process only)."""
        if main:
            if not (best_dir / "config.json").is_file():
                self.det._save(best_dir)
            self.det.load(best_dir)
        else:
            self.det.model.eval()

    def _follow_main_run_dir(self, acc) -> None:
        """Each rank composed its own Hydra run dir (their timestamps may differ): the main process's wins."""
        from accelerate.utils import broadcast_object_list

        if acc.num_processes > 1:
            (main_dir,) = broadcast_object_list([str(self.det.run_dir)])
            if Path(main_dir) != Path(self.det.run_dir):
                log.info("rank %d writes into the main process's run dir %s", acc.process_index, main_dir)
                self.det.run_dir = Path(main_dir)

    def _model_to_train(self, t, resume: bool, last_dir: Path):
        """The model to train, on the training device: the interrupted run's last weights, or a new one."""
        if resume:
            recover_dir(last_dir)  # a save cut between its two renames
            if not (last_dir / STATE).is_file():
                raise UserError(
                    f"resume=true but {last_dir / STATE} does not exist (point hydra.run.dir at the interrupted run)"
                )
            self.det.load(last_dir)
        else:
            self.det.model = self.det._build(self.det.class_names)
        check_input_size(self.det.family, self.det.model.config, self.det.imgsz)
        model = self.det.model.to(self.det.device)
        # transformers decides backbone freezing differently for a fresh model (all frozen) and a reloaded one
        # (all trainable); a random-init backbone must learn, so the choice is explicit here.
        for n, p in model.named_parameters():
            p.requires_grad_(not (t.freeze_backbone and "backbone" in n))
        return model

    def _loaders(self, t, dataset, gen: torch.Generator) -> tuple:
        """The training loader (shuffled by ``gen``, augmented by ``train.augment``) and the validation loader."""
        loader = functools.partial(
            torch.utils.data.DataLoader,
            batch_size=int(t.batch),
            num_workers=int(t.workers),
            collate_fn=_collate,
        )
        aug = OmegaConf.to_container(t.augment, resolve=True)
        fam = FAMILIES[self.det.family]
        train_loader = loader(
            _DetectionDataset(dataset["train"], self.det.imgsz, aug, self.det.box_frame, fam),
            shuffle=True,
            generator=gen,
        )
        val_loader = loader(_DetectionDataset(dataset["val"], self.det.imgsz, None, self.det.box_frame, fam))
        return train_loader, val_loader

    def _prepare_run(self, t, acc, dataset, last_dir: Path, resume: bool) -> _Run:
        """Model, loaders, optimizer and schedule of a training, restored from ``last_dir`` on resume and
        prepared by ``acc`` (DDP wrapper, sharded loaders, mixed precision)."""
        model = self._model_to_train(t, resume, last_dir)
        gen = torch.Generator().manual_seed(int(t.seed))
        train_loader, val_loader = self._loaders(t, dataset, gen)
        optimizer, scheduler = _optimizer(model, t)
        state = None
        if resume:  # every rank reads the main process's last state (weights, optimizer, schedule, RNG)
            state = _restore(last_dir / STATE, optimizer, scheduler, gen)
        # DDP wrapper, sharded loaders (the shuffling generator synchronised from the main process), the optimizer
        # under the mixed-precision scaler; the per-epoch cosine schedule steps once per epoch (not per process)
        model, optimizer, train_loader, val_loader = acc.prepare(model, optimizer, train_loader, val_loader)
        if scheduler is not None:
            scheduler = acc.prepare(scheduler)
        self.det.model = acc.unwrap_model(model)  # what predict / the validator / the checkpoints use
        loaders = (train_loader, val_loader, dataset["val"])
        return _Run(
            self.det,
            self._step,
            acc,
            model,
            optimizer,
            scheduler,
            loaders,
            gen,
            last_dir,
            float(t.grad_clip),
            state,
        )
