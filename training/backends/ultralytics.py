"""Ultralytics backend: YOLOv8 / YOLO11 / YOLOv10 / RT-DETR behind the Detector contract."""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from training.backends.base import EVAL_CONF, Detections, Detector, ExportSpec, ImageInput, is_dynamic_hw
from training.cli import ConfigError, OfflineError, UserError, first_line
from training.compat.ultralytics import TrainerHooks
from training.data import cache_root, load_dataset, prepare_yolo

log = logging.getLogger(__name__)

# Set by the framework, never by ``train.*``: they would bypass the data layer or the run dir.
# `cfg` is ultralytics' file of further arguments (it could set the reserved ones); `save_dir` its run folder
RESERVED_ARGS = {"data", "project", "name", "exist_ok", "resume", "model", "mode", "task", "cfg", "save_dir"}
# ultralytics integrations that would open / close their own tracker runs behind ours.
FOREIGN_TRACKERS = ("ultralytics.utils.callbacks.wb",)
ASSET_URL = "https://github.com/ultralytics/assets/releases"


def load_yolo(path: str | Path, what: str = "checkpoint"):
    """An ultralytics model from a ``.pt`` through the safe path (training/checkpoints.py); one line on failure."""
    from training.compat.ultralytics import safe_load

    with safe_load():
        return _load_yolo(path, what)


def _load_yolo(path: str | Path, what: str):
    from training.checkpoints import check_ultralytics_checkpoint, load_weights, names_ultralytics_classes
    from training.compat.ultralytics import YOLO

    path = check_ultralytics_checkpoint(path)
    if not names_ultralytics_classes(path):
        # plain tensors / dicts: a state dict of another model (the region classifier's, a transformers one...)
        from training.classifier.model import is_classifier_checkpoint

        obj = load_weights(path, what)
        kind = (
            "the region classifier's checkpoint (run it with python -m training.classifier.infer, or export it with python -m export)"
            if is_classifier_checkpoint(obj)
            else f"a {type(obj).__name__} without an ultralytics model"
        )
        raise UserError(f"{path}: not an ultralytics {what}: it holds {kind}")
    try:
        return YOLO(str(path))  # YOLO() loads RT-DETR weights too (it only cannot build RT-DETR from YAML)
    except (TypeError, ValueError, KeyError, AttributeError, ModuleNotFoundError) as e:
        # ultralytics' restricted loader raises TypeError for files outside its format
        raise UserError(f"{path}: not a loadable ultralytics {what} ({first_line(e, 200)})") from None


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


def resolve_weights(weights: str) -> str:
    """A local file, or an ultralytics asset name fetched when online; offline, one clear error."""
    from training.compat.ultralytics import SETTINGS, is_online

    p = Path(weights).expanduser()
    if p.is_file():
        return str(p)
    if p.parent != Path(".") or p.suffix != ".pt":
        raise UserError(f"model.weights: file {p} not found")
    cached = Path(SETTINGS["weights_dir"]) / p.name
    if cached.is_file():
        return str(cached)
    if os.environ.get("YOLO_OFFLINE") or not is_online():
        raise OfflineError(
            f"model.weights={weights}: not found locally and no network; download {p.name} from {ASSET_URL} "
            f"and set model.weights=/path/to/{p.name} (or set model.weights=null to train from scratch)"
        )
    try:
        from training.compat.ultralytics import attempt_download_asset

        return attempt_download_asset(p.name)
    except Exception as e:
        raise OfflineError(
            f"model.weights={weights}: download failed ({e.__class__.__name__}); get it from {ASSET_URL}"
        ) from None


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


def _metric_key(k: str) -> str:
    # 'metrics/mAP50-95(B)' -> 'mAP50-95'; 'val/box_loss' stays
    return k.replace("metrics/", "").replace("(B)", "")


def _val_metrics(prefix: str, metrics: dict) -> dict[str, float]:
    """ultralytics' ``metrics/...`` entries as ``<prefix><name>`` floats (losses and fitness left out)."""
    return {f"{prefix}{_metric_key(k)}": float(v) for k, v in metrics.items() if k.startswith("metrics/")}


class UltralyticsDetector(Detector):
    """YOLO-family and RT-DETR models through ``ultralytics``."""

    name = "ultralytics"
    _device: str | None = None  # load()'s device: where _net() puts the network
    _net_of = None  # the loaded model _net() last prepared

    @classmethod
    def owns(cls, path: Path) -> bool:
        """A ``.pt`` whose pickle names ultralytics classes (read without unpickling; a file naming anything but
        model classes and plain data is refused here, whatever backend it was meant for)."""
        from training.checkpoints import check_ultralytics_checkpoint, names_ultralytics_classes

        return path.is_file() and names_ultralytics_classes(check_ultralytics_checkpoint(path))

    # -- building -------------------------------------------------------------------------------------
    def _build(self):
        from training.compat.ultralytics import safe_load

        with safe_load():  # weights load restricted, model YAMLs are parsed without eval() too
            return self._build_model()

    def _build_model(self):
        from training.compat.ultralytics import RTDETR, YOLO

        weights, arch = self.model_cfg.weights, self.model_cfg.arch
        if weights:
            model = load_yolo(resolve_weights(str(weights)), "weights file (model.weights)")
            held = str((getattr(model.model, "yaml", None) or {}).get("yaml_file") or "")
            if arch and held and Path(held).stem != Path(str(arch)).stem:
                # training a yolov10n run from yolov8n weights would silently train a yolov8n
                raise ConfigError(
                    f"model.weights={weights} holds a {Path(held).stem} but model={self.model_cfg.name} is a "
                    f"{Path(str(arch)).stem}; choose the matching model=..., or model.weights=null for random init"
                )
            return model
        if not arch:
            raise ConfigError(f"model '{self.model_cfg.name}': set model.arch (a YAML) or model.weights")
        # YOLO() cannot build RT-DETR from its YAML (it can load its weights)
        build = RTDETR if "rtdetr" in Path(str(arch)).stem else YOLO
        try:
            return build(str(arch))  # random init from the architecture YAML
        except (
            FileNotFoundError,
            TypeError,
            ValueError,
            KeyError,
            AttributeError,
            IndexError,
            SyntaxError,
        ) as e:
            # a YAML of one's own (or from others) that ultralytics cannot build, e.g. a refused activation
            raise ConfigError(
                f"model.arch={arch}: not an architecture ultralytics can build ({e.__class__.__name__}: "
                f"{first_line(e, 160)})"
            ) from None

    # -- training -------------------------------------------------------------------------------------
    def train(self, cfg) -> dict[str, float]:
        from omegaconf import OmegaConf

        from training.augment import Recipe

        args = check_train_args(OmegaConf.to_container(cfg.train, resolve=True) or {})
        recipe = Recipe.from_cfg(cfg.recipe)
        augmentations = recipe.augmentations()
        if augmentations is not None:
            args["augmentations"] = augmentations  # ultralytics runs them (albumentations, boxes follow)
        resume = bool(cfg.resume)
        last = self.run_dir / "weights" / "last.pt"
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
                self.load(best if best.is_file() else last)
                return {"train/resumed_finished_run": 1.0}
        else:
            model = self._build()
        dataset = load_dataset(cfg.data, ("train", "val"))
        data_yaml = prepare_yolo(dataset, cache_root(cfg.data))
        self.class_names = dataset.class_names
        epochs_log = EpochLogger(self.tracker)
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
        self.load(best)
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
                    save_dir=str(self.run_dir.resolve()),
                    trainer=trainer_cls,
                )
            else:
                model.train(
                    **args,
                    data=str(data_yaml),
                    project=str(self.run_dir.parent.resolve()),
                    name=self.run_dir.name,
                    exist_ok=True,
                    trainer=trainer_cls,
                )

    # -- inference ------------------------------------------------------------------------------------
    def load(self, checkpoint, device: str | None = None) -> None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise UserError(f"checkpoint {checkpoint} not found")
        self.model = load_yolo(checkpoint)
        self._checkpoint = checkpoint
        self._device = device
        names = self.model.names
        self.class_names = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)

    def _net(self):
        """The network in the state ultralytics' exporter puts it in (fused, head returning one raw tensor),
        cached per loaded model: the same module an export traces, so both decode the same output."""
        from training.backends.yolo_processing import export_module, head_kind

        model = self._require()
        if self._net_of is not model:
            self._infer_net = export_module(model.model).to(self.device)
            if self.half:
                self._infer_net.half()
            self._head = head_kind(model.model)
            self._net_of = model
        return self._infer_net

    def set_half(self) -> None:
        self.half = True
        self._net_of = None  # rebuilt in FP16 by the next _net()

    @property
    def device(self) -> str:
        """Where :meth:`predict` runs: the device :meth:`_net` puts the network on (load()'s, else CUDA when there
        is one). ultralytics' own model object stays on the CPU, so its ``device`` does not say."""
        from training.hardware import resolve_device

        return str(resolve_device(self._device))

    def _imgsz(self, imgsz: int | None) -> int:
        if imgsz:
            return int(imgsz)
        args = getattr(self._require(), "ckpt", None) or {}
        return int((args.get("train_args") or {}).get("imgsz", 640) or 640)

    def _options(self, head: str) -> dict:
        """What :meth:`postprocess` reads: the head kind and this run's decoding (conf/decode)."""
        return {"head": head, "iou": self.decode["iou"], "max_det": self.decode["max_det"]}

    def predict(
        self,
        images: list[ImageInput],
        conf: float = EVAL_CONF,
        imgsz: int | None = None,
    ) -> list[Detections]:
        """Square letterbox -> network -> decode, all from ``yolo_processing`` (shared with exported models, so
        that one image gives the same boxes in PyTorch, ONNX Runtime, OpenVINO and TensorRT)."""
        net = self._net()
        options = self._options(self._head)
        return self._predict_each(
            net, next(net.parameters()).device, images, self._imgsz(imgsz), options, conf
        )

    def benchmark_forward(self, imgsz: int | None = None):
        import torch

        net = self._net()
        size = self._imgsz(imgsz)
        return self._timed(net, torch.zeros(1, 3, size, size, device=next(net.parameters()).device))

    def library_metrics(
        self, split: str, imgsz: int | None, yolo_data: Callable[[], Path], batch: int = 8
    ) -> dict[str, float]:
        """ultralytics' own validation metrics for ``split``, keys prefixed ``ultralytics/<split>/``."""
        kwargs = {"data": str(yolo_data()), "split": split, "batch": batch, "plots": False, "verbose": False}
        kwargs.update(project=str(self.run_dir.resolve()), name="ultralytics_val", exist_ok=True)
        if imgsz:
            kwargs["imgsz"] = int(imgsz)
        res = self._require().val(**kwargs)
        shutil.rmtree(self.run_dir / "ultralytics_val", ignore_errors=True)
        return _val_metrics(f"ultralytics/{split}/", res.results_dict)

    # -- export (the contract of training.backends.base.Backend) -----------------------------------------
    def export_spec(self, imgsz: int | None = None, dynamic: bool = False) -> ExportSpec:
        from training.backends.yolo_processing import export_module, head_kind

        net = self._require().model.cpu()
        head = len(list(net.model)) - 1  # model.<last>
        ops = ("Add", "Sub", "Mul", "Div", "Concat", "Sigmoid", "Softmax")
        return ExportSpec(
            self.name,
            self._imgsz(imgsz),
            list(self.class_names),
            ["images"],
            ["output0"],
            self._options(head_kind(net)),
            export_module(net, dynamic=dynamic),
            str(self._checkpoint or ""),
            # the box decoding of YOLO heads stays FP32: INT8 there costs far more mAP than it saves time
            # (the scope ultralytics' own OpenVINO INT8 export ignores)
            int8={
                "ignored_patterns": [f".*model\\.{head}/.*{op}.*" for op in ops]
                + [f".*model\\.{head}/dfl.*"],
                "ignored_types": ["Sigmoid"],
            },
        )

    rect_inputs = True

    @staticmethod
    def in_graph_preprocessing(options: dict) -> dict:
        return {"mean": [0.0, 0.0, 0.0], "scale": [255.0, 255.0, 255.0]}  # the letterboxed page / 255

    @staticmethod
    def _input_hw(imgsz: int, options: dict) -> tuple[int, int]:
        """The network input (h, w): ``imgsz`` square, or the export's rectangular ``options["input_hw"]``; for a
        dynamic input (``"dynamic"``) the largest one, the square (each page's own is :meth:`_letterbox`'s)."""
        hw = options.get("input_hw")
        hw = (imgsz, imgsz) if not hw or is_dynamic_hw(hw) else hw
        return int(hw[0]), int(hw[1])

    @staticmethod
    def _letterbox(image, imgsz: int, options: dict, as_u8: bool):
        """The page letterboxed into the export's input: a fixed square or rectangle, or, with a dynamic input,
        its own rectangle padded to the heads' largest stride (32); the canvas is ``... x H x W`` either way."""
        from training.backends.yolo_processing import letterbox, letterbox_u8

        stride = 32 if is_dynamic_hw(options.get("input_hw")) else 0
        fn = letterbox_u8 if as_u8 else letterbox
        return fn(image, UltralyticsDetector._input_hw(imgsz, options), stride)

    @staticmethod
    def preprocess(image, imgsz: int, options: dict):
        x, meta = UltralyticsDetector._letterbox(image, imgsz, options, as_u8=False)
        return {"images": x[None]}, (meta, image.size, x.shape[1:])

    @staticmethod
    def preprocess_u8(image, imgsz: int, options: dict):
        canvas, meta = UltralyticsDetector._letterbox(image, imgsz, options, as_u8=True)
        size = (image.shape[1], image.shape[0]) if hasattr(image, "shape") else image.size  # array or PIL
        return {"images": canvas[None]}, (meta, size, canvas.shape[:2])

    @staticmethod
    def example_inputs(imgsz: int, options: dict, batch: int = 1) -> tuple:
        import torch

        return (torch.rand(batch, 3, *UltralyticsDetector._input_hw(imgsz, options)),)

    @staticmethod
    def postprocess(outputs, ctx, imgsz: int, options: dict, conf: float = EVAL_CONF):
        from training.backends.yolo_processing import decode

        meta, size, input_hw = ctx  # input_hw: this page's network input (h, w)
        return decode(
            outputs[0][0],
            options["head"],
            meta,
            size,
            tuple(input_hw),
            conf,
            float(options["iou"]),
            int(options["max_det"]),
        )
