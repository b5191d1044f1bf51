"""Training of the ultralytics backend (:class:`UltralyticsTrainer`): ultralytics' own loop run by our trainer
class, the recipe's copy-paste hooked into it and its epochs sent to our tracker. The detector
(:class:`~training.backends.ultralytics.UltralyticsDetector`) holds loading, prediction and export.

ultralytics' multi-GPU launcher pickles the trainer class by reference: the ``Sigdet<base>`` classes are reachable
by name from this module (:func:`trainer_class` and the module's ``__getattr__``)."""

from __future__ import annotations

import csv
import difflib
import functools
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

from training.backends.base import Trainer
from training.backends.ultralytics import _metric_key, _val_metrics, load_yolo
from training.cli import ConfigError, UserError
from training.compat.ultralytics import TrainerHooks
from training.data import cache_root, load_dataset, prepare_yolo

log = logging.getLogger(__name__)

# Set by the framework, never by ``train.*``: they would bypass the data layer or the run dir.
# `cfg` is ultralytics' file of further arguments (it could set the reserved ones); `save_dir` its run folder
RESERVED_ARGS = {"data", "project", "name", "exist_ok", "resume", "model", "mode", "task", "cfg", "save_dir"}
# ultralytics integrations that would open / close their own tracker runs behind ours.
FOREIGN_TRACKERS = ("ultralytics.utils.callbacks.wb",)


# the atomic copy of last.pt that runs before checkpoints were written atomically (save_model) kept after each save:
# a torn last.pt of such a run resumes from it
LAST_COMPLETE = "last_complete.pt"


def _vet_run_checkpoints(weights: Path) -> None:
    """Before resuming, check every checkpoint of the run, each scanned and trial-loaded through ultralytics'
    restricted loader (ultralytics re-reads last.pt and best.pt itself), so a booby-trapped one is refused before
    any work. A file torn by a kill mid-save is this run's own: last.pt is restored from its atomic copy, a torn
    best.pt is set aside (the resumed run writes a new one)."""
    from training.checkpoints import UnsafeCheckpoint, vet_ultralytics_checkpoint

    for pt in sorted(weights.glob("*.pt")):
        try:
            vet_ultralytics_checkpoint(pt)
        except UnsafeCheckpoint:
            raise
        except UserError as e:
            complete = weights / LAST_COMPLETE
            if pt.name == "last.pt" and complete.is_file():
                vet_ultralytics_checkpoint(complete)
                log.warning("%s; resuming from %s, saved after the last complete epoch", e, complete)
                shutil.copyfile(complete, pt)
            elif pt.name == "best.pt":
                aside = pt.with_suffix(".pt.torn")
                log.warning("%s; set aside as %s", e, aside)
                pt.rename(aside)
            else:
                raise


def check_train_args(args: dict) -> dict:
    """Reject unknown or framework-owned ultralytics arguments with the closest valid names."""
    from training.compat.ultralytics import DEFAULT_CFG_DICT, check_cfg

    for key in args:
        if key in RESERVED_ARGS:
            raise ConfigError(
                f"train.{key} is set by the framework (use data=..., hydra.run.dir=..., resume=true)"
            )
        if key not in DEFAULT_CFG_DICT:
            near = difflib.get_close_matches(key, list(DEFAULT_CFG_DICT), n=3)
            raise ConfigError(
                f"train.{key} is not an ultralytics train argument"
                + (f"; did you mean {near}?" if near else "")
            )
    try:  # ultralytics' own type / range checks, before anything is built
        check_cfg(dict(args), hard=True)
    except (TypeError, ValueError, SyntaxError) as e:
        raise ConfigError(f"train: {str(e).strip().splitlines()[0]}") from None
    return args


def native_cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes BF16 natively (AMX or AVX512-BF16: what makes torch's BF16 autocast faster than
    FP32 there; elsewhere oneDNN emulates it, slower than FP32), with the reason."""
    from training.hardware import cpu_flags

    have = [f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()]
    if have:
        return True, f"CPU has {' '.join(have)}"
    return False, "this CPU has no native BF16 (neither amx_bf16 nor avx512_bf16 in its flags)"


def native_cuda_bf16() -> bool:
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except (RuntimeError, AssertionError):
        return False


def bf16_plan(amp, device_type: str) -> tuple[object, bool, str | None]:
    """What ``train.amp=bf16`` becomes on ``device_type``: (the ``amp`` ultralytics is given, whether our trainer
    turns on torch's CPU autocast after ultralytics' set-up, the log line). ultralytics runs BF16 autocast on
    CUDA devices with native BF16 only: its ``autocast()`` raises for a CPU and for a GPU without it (a T4).
    On a CPU with AMX / AVX512-BF16, torch's BF16 autocast trains a YOLOv8n at 320 1.6x faster per epoch than
    FP32 (2-core AMX Xeon, benchmarks/recipe_ablation.py row fp32); other CPUs train in FP32 (emulated BF16 is
    slower), a GPU without BF16 in FP16 AMP. Any other ``amp`` passes through."""
    if str(amp).lower() != "bf16":
        return amp, False, None
    if device_type == "cpu":
        native, why = native_cpu_bf16()
        return False, native, "BF16 autocast" if native else f"FP32 ({why})"
    if device_type == "cuda" and not native_cuda_bf16():
        return True, False, "FP16 AMP (this GPU has no native BF16)"
    return amp, False, None


# Not an ultralytics event: the copy-paste hook rides in the callbacks, which ultralytics hands to every DDP worker
# (pickled with cloudpickle), so that all ranks paste, not only the launching process.
PASTE_EVENT = "sigdet_paste"


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _column(cells: list[str]) -> list:
    """One results.csv column typed as a whole, as polars' schema inference types it: every filled cell an integer
    -> ints, every one a number -> floats, else the text; an empty cell is None."""
    filled = [c for c in cells if c != ""]
    for pattern, kind in ((_INT, int), (_FLOAT, float)):
        if all(pattern.fullmatch(c) for c in filled):
            return [kind(c) if c != "" else None for c in cells]
    return [c if c != "" else None for c in cells]


class _SigdetTrainer(TrainerHooks):
    """Mixed in before the model's ultralytics trainer (:func:`trainer_class`): drops ultralytics' own tracker
    callbacks (we own the W&B run) and hooks the recipe's copy-paste (``PASTE_EVENT``) into the training set.
    Its hooks into ultralytics' private life cycle (restricted checkpoint loading in a DDP worker too, the set-up
    step) are :class:`~training.compat.ultralytics.TrainerHooks`'."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for event, fns in self.callbacks.items():
            self.callbacks[event] = [f for f in fns if getattr(f, "__module__", "") not in FOREIGN_TRACKERS]

    def around_setup_train(self, setup) -> None:
        # train.amp=bf16 where ultralytics cannot run it (bf16_plan): ultralytics is told what it can run, and on
        # the CPU its own switch, ``self.amp``, which its step wraps in autocast(self.amp, device="cpu"), is
        # turned on after its set-up (torch's CPU autocast dtype is bfloat16). Its validator keeps FP32 on the CPU.
        self.sigdet_asked_amp = self.args.amp
        self.args.amp, cpu_autocast, note = bf16_plan(self.args.amp, self.device.type)
        setup()
        if cpu_autocast:
            self.amp = True
        if note:
            log.info("train.amp=bf16 on %s: %s", self.device.type, note)

    def save_model(self):
        # the checkpoint's train_args say what the user asked for (a resume plans the same way again)
        held = self.args.amp
        self.args.amp = getattr(self, "sigdet_asked_amp", held)
        # ultralytics writes last.pt / best.pt in place (Path.write_bytes): a full disk or a kill mid-write would
        # tear the last good checkpoint. Written under temporary names and renamed, each is whole or the previous.
        last, best = self.last, self.best
        self.last, self.best = last.with_name(f".{last.name}.part"), best.with_name(f".{best.name}.part")
        try:
            saved = super().save_model()
            for part, final in ((self.last, last), (self.best, best)):
                if part.exists():
                    os.replace(part, final)
            return saved
        except OSError as e:
            if (
                e.filename is None
            ):  # a failed write() names no file: say which checkpoint could not be written
                raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(last)) from None
            raise
        finally:
            for part in (self.last, self.best):
                part.unlink(missing_ok=True)
            self.last, self.best = last, best
            self.args.amp = held

    def read_results_csv(self) -> dict:
        """results.csv as {column: values}, for the checkpoint's ``train_results``. ultralytics reads it with polars,
        whose 54 MB wheel slim GPU images lack (and the GPU check cannot carry): the stdlib reads the same table."""
        try:
            with open(self.csv, newline="", encoding="utf-8") as f:
                header, *rows = list(csv.reader(f))
            if any(len(r) != len(header) for r in rows):
                return {}  # a torn or ragged table: polars refuses it, and ultralytics then stores nothing
            return {name: _column([r[i] for r in rows]) for i, name in enumerate(header)}
        except Exception:  # whatever the file holds, as ultralytics' own (the checkpoint is what matters)
            return {}

    def build_dataset(self, img_path, mode="train", batch=None):
        dataset = super().build_dataset(img_path, mode, batch)
        if mode == "train":
            for paste in self.callbacks.get(PASTE_EVENT, []):
                paste(dataset)
        return dataset


@functools.cache
def trainer_class(base: type) -> type:
    """``Sigdet<base>``: our trainer over ultralytics' ``base``, reachable by name from this module (ultralytics'
    multi-GPU launcher pickles the trainer class by reference; a DDP worker finds it here through
    :func:`__getattr__`), one class per base."""
    name = f"Sigdet{base.__name__}"
    return type(name, (_SigdetTrainer, base), {"__module__": __name__, "__qualname__": name})


def __getattr__(name: str):
    # Sigdet<Trainer>, by name: a fresh DDP worker unpickles it before anything here created it
    from training.compat import ultralytics as compat

    base = name.removeprefix("Sigdet")
    if base != name and base in compat.TRAINERS:
        return trainer_class(getattr(compat, base))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EpochLogger:
    """ultralytics callbacks that count the epochs and send each epoch's numbers to our tracker.

    ultralytics pickles the callbacks into its DDP workers; the tracker stays behind in the launching process
    (``__getstate__``), which logs the workers' ``results.csv`` after training (:meth:`replay`).
    """

    def __init__(self, tracker):
        self.tracker, self.epochs, self.pending = tracker, 0, False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tracker": None}

    def on_train_epoch_end(self, trainer) -> None:
        # ultralytics recovers from a NaN epoch by reloading last.pt; make sure it is visible in our logs.
        import torch

        loss = trainer.tloss
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            log.warning("non-finite training loss at epoch %d", trainer.epoch + 1)
        self.epochs, self.pending = trainer.epoch + 1, True

    def on_fit_epoch_end(self, trainer) -> None:
        # ultralytics fires this once more after the last epoch (final_eval of best.pt, at epoch + 1): only
        # epochs that trained are logged; the final numbers come from our evaluator.
        if not self.pending or self.tracker is None:
            return
        self.pending = False
        logs = {f"ultralytics/{_metric_key(k)}": float(v) for k, v in (trainer.metrics or {}).items()}
        logs.update(
            {
                f"ultralytics/{k}": float(v)
                for k, v in trainer.label_loss_items(trainer.tloss, prefix="train").items()
            }
        )
        logs.update(
            {f"ultralytics/lr/pg{i}": float(g["lr"]) for i, g in enumerate(trainer.optimizer.param_groups)}
        )
        self._log(trainer.epoch + 1, logs)

    def _log(self, epoch: int, logs: dict[str, float]) -> None:
        p, r = logs.get("ultralytics/precision"), logs.get("ultralytics/recall")
        if p is not None and r is not None:  # ultralytics' F1 at its own operating point: a per-epoch signal
            logs["ultralytics/f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        self.tracker.log_metrics({**logs, "epoch": epoch}, step=epoch)

    def replay(self, results_csv: Path) -> None:
        """After a multi-GPU run: the epochs its rank-0 worker wrote to ``results.csv``, logged as if live."""
        import csv

        if not results_csv.is_file():
            return
        with open(results_csv, newline="", encoding="utf-8") as f:
            rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
        for row in rows:
            epoch = int(float(row.pop("epoch")))
            self.epochs = max(self.epochs, epoch)
            if self.tracker is not None:
                logs = {
                    f"ultralytics/{_metric_key(k)}": float(v) for k, v in row.items() if k != "time" and v
                }
                self._log(epoch, logs)


class UltralyticsTrainer(Trainer):
    """Trains an :class:`~training.backends.ultralytics.UltralyticsDetector` with ultralytics' own loop (new or
    resumed), then loads its best weights into the detector."""

    def train(self, cfg) -> dict[str, float]:
        from omegaconf import OmegaConf

        from training.augment import Recipe

        args = check_train_args(OmegaConf.to_container(cfg.train, resolve=True) or {})
        recipe = Recipe.from_cfg(cfg.recipe)
        augmentations = recipe.augmentations()
        if augmentations is not None:
            args["augmentations"] = augmentations  # ultralytics runs them (albumentations, boxes follow)
        resume = bool(cfg.resume)
        last = self.det.run_dir / "weights" / "last.pt"
        if resume:
            if not last.is_file():
                raise UserError(
                    f"resume=true but {last} does not exist (point hydra.run.dir at the interrupted run)"
                )
            _vet_run_checkpoints(last.parent)
            model = load_yolo(last, "checkpoint (resume)")
            if (model.ckpt or {}).get("epoch", 0) == -1:
                # ultralytics marks a finished training with epoch -1 and refuses to resume it: the training
                # part is done (an evaluation after it failed), so load the best weights and go on
                best = last.with_name("best.pt")
                self.det.load(best if best.is_file() else last)
                return {"train/resumed_finished_run": 1.0}
        else:
            model = self.det._build()
        dataset = load_dataset(cfg.data, ("train", "val"))
        data_yaml = prepare_yolo(dataset, cache_root(cfg.data))
        self.det.class_names = dataset.class_names
        epochs_log = EpochLogger(self.det.tracker)
        model.add_callback("on_train_epoch_end", epochs_log.on_train_epoch_end)
        model.add_callback("on_fit_epoch_end", epochs_log.on_fit_epoch_end)
        paste = recipe.paster(dataset["train"], cfg.data.max_image_pixels)
        if paste is not None:
            model.add_callback(PASTE_EVENT, paste)
        t0 = time.perf_counter()
        self._fit(model, data_yaml, args, last if resume else None)
        elapsed = time.perf_counter() - t0
        trainer = model.trainer
        best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
        self.det.load(best)
        if (
            trainer.ddp
        ):  # trained by ultralytics' DDP workers: their epochs reach our tracker from results.csv
            epochs_log.replay(Path(trainer.csv))
        epochs = int(epochs_log.epochs or getattr(trainer, "epoch", 0) + 1)
        n_train = len(dataset["train"].images)
        out = {
            "train/epochs": float(epochs),
            "train/time_s": elapsed,
            "train/images_per_s": (epochs - trainer.start_epoch) * n_train / elapsed
            if elapsed > 0
            else math.nan,
            **dataset.skipped_metrics(),
        }
        if paste is not None:
            out["recipe/paste_crops"] = float(len(paste.bank))
        out.update(_val_metrics("ultralytics/val/", trainer.metrics or {}))
        return out

    def _fit(self, model, data_yaml: Path, args: dict, resume_from: Path | None) -> None:
        """ultralytics' training of ``model`` by our trainer class, new or resumed from ``resume_from``."""
        from training.compat.ultralytics import safe_load, trainer_base

        trainer_cls = trainer_class(trainer_base(model))
        with safe_load():  # ultralytics reads last.pt on resume and best.pt / last.pt at the end
            if resume_from is not None:
                # ultralytics takes every other argument from the checkpoint's train_args: its data (whose YAML it
                # reads, `download:` script included) and its save_dir are ours, not whatever the file says
                model.train(
                    resume=str(resume_from),
                    data=str(data_yaml),
                    save_dir=str(self.det.run_dir.resolve()),
                    trainer=trainer_cls,
                )
            else:
                model.train(
                    **args,
                    data=str(data_yaml),
                    project=str(self.det.run_dir.parent.resolve()),
                    name=self.det.run_dir.name,
                    exist_ok=True,
                    trainer=trainer_cls,
                )
