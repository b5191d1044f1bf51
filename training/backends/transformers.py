"""Transformers backend: DETR, Conditional-DETR, YOLOS, RT-DETRv2, D-FINE, DEIMv2 and RF-DETR behind the Detector
contract (:data:`FAMILIES`).

Weights come from a hub id or a local directory (``from_pretrained`` with a new head for our classes), or the
model is built from config with random init and a locally built backbone config (ResNet for the DETR families,
``model.backbone.model_type`` for the others): no network at all.
Training is a plain loop (``training.loops``) on ``accelerate``: one process, or DDP under ``torchrun`` /
``accelerate launch`` (gloo on CPUs), mixed precision (``train.precision``), gradient accumulation, with
checkpoints, resume, early stopping on the configured metric and gradient clipping. Periodic validation goes
through the injected validator (our evaluator) on the main process, so ``val/mAP50`` means the same for a DETR and
a YOLO; checkpoints and tracking are the main process's too, in the same format whatever the number of processes.

A run folder (``weights/best``) is also a transformers model folder: ``config.json`` (labels = our class names),
``model.safetensors`` and ``preprocessor_config.json`` (the family's image processor set to preprocess as we do),
so ``AutoImageProcessor``, ``AutoModelForObjectDetection`` and ``pipeline("object-detection")`` load it as is
and find the boxes we find (tests/test_hf_interop.py). Folders saved before the processor file existed get it
from ``python -m evaluation.publish``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from training.backends.base import EVAL_CONF, Detections, Detector, ExportSpec, ImageInput
from training.backends.hf_processing import (
    GraphWrapper,
    boxes_to_targets,
    decode,
    preprocess_image,
    processor_kwargs,
)
from training.cli import ConfigError, DataError, OfflineError, UserError, first_line
from training.compat.accelerate import reset_state as reset_accelerate_state
from training.compat.transformers import box_count_summed, fixed_position_embeddings
from training.data import load_dataset
from training.data.images import load_rgb
from training.data.schema import DetectionSplit
from training.fileio import recover_dir, swap_in_dir, writing
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


@dataclass(frozen=True)
class HFFamily:
    """One transformers detector family: its classes (looked up in ``transformers`` by name) and how its inputs and
    outputs are read (the options every runtime's pre/post-processing gets, training/backends/hf_processing.py)."""

    config: str  # config class
    model: str  # model class (``...ForObjectDetection``)
    processor: str  # image processor written beside the weights, configured as hf_processing preprocesses
    score_mode: str  # softmax (a no-object class) | sigmoid (focal: top-k over queries x classes)
    mask: bool  # the forward takes a pixel_mask
    resize: str  # hf_processing.RESIZES: letterbox (aspect kept, padded) | stretch (to the square, upstream's way)
    normalize: bool  # inputs standardised with ImageNet statistics (as the family's pretraining saw them)
    # queries picked by top-k over the encoder's scores (two-stage): ties broken by index, as an export does
    ordered_topk: bool = False
    # the input size must be a multiple of backbone patch size x windows (RF-DETR's windowed DINOv2)
    windowed: bool = False


# family (model.family) -> what the backend needs of it; boxes are cxcywh normalised to the input (BOX_FRAME image)
_DETR = {"mask": True, "resize": "letterbox", "normalize": True}
# the RT-DETR lineage: [0, 1] inputs stretched to the square, no normalisation (PekingU/rtdetr_v2_*,
# ustc-community/dfine-*: RTDetrImageProcessor with do_normalize false; DEIMv2's auto image processor is the same);
# sigmoid (focal) scores; queries chosen by top-k over the encoder's proposals
_RT_DETR = {"mask": False, "resize": "stretch", "normalize": False, "ordered_topk": True}
FAMILIES = {
    "detr": HFFamily("DetrConfig", "DetrForObjectDetection", "DetrImageProcessor", "softmax", **_DETR),
    "conditional_detr": HFFamily(
        "ConditionalDetrConfig",
        "ConditionalDetrForObjectDetection",
        "ConditionalDetrImageProcessor",
        "sigmoid",
        **_DETR,
    ),
    "yolos": HFFamily(
        "YolosConfig", "YolosForObjectDetection", "YolosImageProcessor", "softmax", **{**_DETR, "mask": False}
    ),
    "rt_detr_v2": HFFamily(
        "RTDetrV2Config", "RTDetrV2ForObjectDetection", "RTDetrImageProcessor", "sigmoid", **_RT_DETR
    ),
    "d_fine": HFFamily(
        "DFineConfig", "DFineForObjectDetection", "RTDetrImageProcessor", "sigmoid", **_RT_DETR
    ),
    "deimv2": HFFamily(
        "Deimv2Config", "Deimv2ForObjectDetection", "RTDetrImageProcessor", "sigmoid", **_RT_DETR
    ),
    # windowed DINOv2 backbone: ImageNet statistics, stretched to the square (Roboflow/rf-detr-*: size {height, width})
    "rf_detr": HFFamily(
        "RfDetrConfig",
        "RfDetrForObjectDetection",
        "RfDetrImageProcessor",
        "sigmoid",
        **{**_RT_DETR, "normalize": True, "windowed": True},
    ),
}

META = "sigdet.json"
STATE = "trainer_state.pt"
# the box frame (hf_processing.BOX_FRAMES) of new runs; a sigdet.json without one is from before it: canvas
BOX_FRAME = "image"


def _family(name: str):
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r}: valid families are {sorted(FAMILIES)}")
    import transformers

    transformers.logging.disable_progress_bar()  # per-shard progress bars on every save / load drown the epoch logs
    fam = FAMILIES[name]
    return getattr(transformers, fam.config), getattr(transformers, fam.model), fam.score_mode, fam.mask


def backbone_config(values: dict):
    """``model.backbone`` -> the transformers backbone config: a ``ResNetConfig`` (the DETR families' backbone) unless
    it names its ``model_type`` (``hgnet_v2``, ``rt_detr_resnet``, ``rf_detr_dinov2``, ...), which transformers'
    config registry then builds (``CONFIG_MAPPING``), locally."""
    values = dict(values)
    if "model_type" in values:
        from transformers import CONFIG_MAPPING

        kind = values.pop("model_type")
        if kind not in CONFIG_MAPPING:
            raise ConfigError(f"model.backbone.model_type={kind!r}: not a transformers config type")
        return CONFIG_MAPPING[kind](**values)
    from transformers import ResNetConfig

    return ResNetConfig(**values)


def check_input_size(family: str, config, imgsz: int) -> None:
    """Refuse an input size the family's backbone cannot split: RF-DETR's windowed DINOv2 needs a multiple of
    ``patch_size x num_windows`` (the published models: 16 x 2 = 32, or 14 x 4 = 56 for rf-detr-base).

    Raises:
        ConfigError: one line naming the size, the multiple and the nearest valid sizes.
    """
    if not FAMILIES[family].windowed:
        return
    bb = config.backbone_config
    patch = bb.patch_size[0] if isinstance(bb.patch_size, (list, tuple)) else bb.patch_size
    step = int(patch) * int(getattr(bb, "num_windows", 1) or 1)
    if imgsz % step:
        lo, hi = imgsz // step * step, (imgsz // step + 1) * step
        raise ConfigError(
            f"imgsz={imgsz}: a {family} model with patch size {patch} and {step // int(patch)} windows takes "
            f"multiples of {step} (e.g. train.imgsz={lo or hi} or {hi})"
        )


def image_processor(family: str, imgsz: int):
    """The family's transformers image processor, built locally (no download), set to preprocess as
    :func:`~training.backends.hf_processing.preprocess_image` does for that family."""
    _family(family)
    import transformers

    fam = FAMILIES[family]
    return getattr(transformers, fam.processor)(**processor_kwargs(imgsz, fam.resize, fam.normalize))


def write_image_processor(folder: str | Path) -> Path:
    """Write ``preprocessor_config.json`` into a run folder of this backend (from its ``sigdet.json``); returns it.

    Raises:
        UserError: ``folder`` holds no readable ``sigdet.json``.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    image_processor(str(meta["family"]), int(meta["imgsz"])).save_pretrained(folder)
    return folder / "preprocessor_config.json"


def _read_meta(folder: Path) -> dict:
    """A run folder's ``sigdet.json``; a :class:`UserError` naming the folder or the file when it is not one."""
    path = folder / META
    if not path.is_file():
        raise UserError(
            f"checkpoint {folder}: not a directory written by the transformers backend (no {META})"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not {"family", "imgsz", "class_names"} <= set(meta):
            raise ValueError("family, imgsz or class_names missing")
        imgsz, names = meta["imgsz"], meta["class_names"]
        if not isinstance(meta["family"], str) or meta["family"] not in FAMILIES:
            raise ValueError(f"family {meta['family']!r} is not one of {sorted(FAMILIES)}")
        if not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz <= 0:
            raise ValueError(f"imgsz {imgsz!r} is not a positive integer")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names {names!r} is not a list of names")
        if not isinstance(meta.get("box_frame", "canvas"), str):
            raise ValueError(f"box_frame {meta['box_frame']!r} is not a name")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a {META} of the transformers backend ({first_line(e, 120)})") from None
    return meta


def _labels(names: list[str]) -> dict:
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


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

    def __init__(self, det, acc, model, optimizer, scheduler, loaders, gen, last_dir, grad_clip, state):
        self.det, self.acc, self.model, self.optimizer, self.scheduler = det, acc, model, optimizer, scheduler
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
                self.det._step,
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
        logs = {"val/loss": evaluate_loss(det.model, self.val_loader, det.device, det._step, self.acc)}
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


class TransformersDetector(Detector):
    """DETR-style detectors through ``transformers`` (:data:`FAMILIES`)."""

    name = "transformers"
    distributed = True  # trains under torchrun / accelerate launch (training.train checks)

    def __init__(self, model_cfg, run_dir, tracker=None):
        super().__init__(model_cfg, run_dir, tracker)
        # None when built to load a checkpoint (from_checkpoint): load() reads family and size from it
        self.family = model_cfg.get("family")
        if self.family:
            _family(self.family)  # an unknown family fails here, before anything is built
        self.imgsz: int | None = None
        self.box_frame = BOX_FRAME  # a loaded checkpoint's own (load)
        self.device = torch.device("cpu")
        self._train_device: torch.device | None = None  # set by train(): load() then keeps the model there

    @property
    def score_mode(self) -> str | None:
        """How the family scores a query: ``softmax`` (with a no-object class) or ``sigmoid``."""
        return FAMILIES[self.family].score_mode if self.family else None

    @property
    def use_mask(self) -> bool | None:
        """Whether the family's forward takes a ``pixel_mask``."""
        return FAMILIES[self.family].mask if self.family else None

    @classmethod
    def owns(cls, path: Path) -> bool:
        """A run folder (``from_pretrained`` layout plus our ``sigdet.json``)."""
        return path.is_dir()

    # -- building ----------------------------------------------------------------------------------
    def _build(self, class_names: list[str]):
        cfg_cls, model_cls, _, _ = _family(self.family)
        weights = self.model_cfg.get("weights")
        if weights:
            return self._from_pretrained(model_cls, str(weights), class_names)
        kwargs = OmegaConf.to_container(self.model_cfg.get("config") or {}, resolve=True)
        if self.model_cfg.get("backbone"):
            kwargs["backbone_config"] = backbone_config(
                OmegaConf.to_container(self.model_cfg.backbone, resolve=True)
            )
        return model_cls(cfg_cls(**kwargs, **_labels(class_names)))

    @staticmethod
    def _from_pretrained(model_cls, source: str, class_names: list[str]):
        local = Path(source).expanduser()
        try:
            return model_cls.from_pretrained(
                str(local) if local.exists() else source, ignore_mismatched_sizes=True, **_labels(class_names)
            )
        except OSError as e:
            if local.exists():
                raise UserError(
                    f"model.weights={source}: not a loadable {model_cls.__name__} directory ({first_line(e, 160)})"
                ) from None
            raise OfflineError(
                f"model.weights={source}: not reachable ({e.__class__.__name__}); on a machine with access run "
                f"`hf download {source} --local-dir DIR` and set model.weights=DIR "
                f"(or model.weights=null to build it from config with random init)"
            ) from None

    # -- training ----------------------------------------------------------------------------------
    def _step(self, model, batch, device):
        pixels, masks, targets = batch
        kwargs = {
            "pixel_values": pixels.to(device),
            "labels": [{k: v.to(device) for k, v in t.items()} for t in targets],
        }
        if self.use_mask:
            kwargs["pixel_mask"] = masks.to(device)
        return model(**kwargs).loss

    def _save(self, folder: Path, extra_state: dict | None = None) -> None:
        self.model.config.id2label = dict(enumerate(self.class_names))  # what the pipeline's labels read
        self.model.config.label2id = {n: i for i, n in enumerate(self.class_names)}
        # written beside and swapped in: a full disk or a kill mid-save leaves the previous checkpoint whole
        part = folder.with_name(f".{folder.name}.part")
        shutil.rmtree(part, ignore_errors=True)
        try:
            with writing(part):
                self.model.save_pretrained(part)  # creates the folder
                meta = {
                    k: getattr(self, k) for k in ("family", "imgsz", "class_names", "score_mode", "box_frame")
                }
                (part / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
                image_processor(self.family, self.imgsz).save_pretrained(part)
                if extra_state is not None:
                    torch.save(extra_state, part / STATE)
            swap_in_dir(part, folder)
        finally:
            shutil.rmtree(part, ignore_errors=True)

    def train(self, cfg) -> dict[str, float]:
        """Train on ``cfg.data`` with ``cfg.train`` (conf/trainer/transformers.yaml) through ``accelerate``.

        One process, or one per rank under ``torchrun`` / ``accelerate launch`` (DDP; ``train.batch`` is per
        process). Validation with the injected evaluator, checkpoints, tracking and logging happen on the main
        process; the monitor value is broadcast, so every rank stops at the same epoch.
        """
        _refuse_recipe(cfg)
        t = cfg.train  # conf/trainer/transformers.yaml; its schema (training/config.py) checks keys and types
        self.imgsz = int(t.imgsz)
        acc = _accelerator(t)
        self.device = self._train_device = _train_device(t, acc)
        self._follow_main_run_dir(acc)
        with acc.main_process_first():  # a data cache is written once, by the main process
            dataset = load_dataset(cfg.data, ("train", "val"))
        self.class_names = dataset.class_names
        last_dir, best_dir = self.run_dir / "weights" / "last", self.run_dir / "weights" / "best"
        run = self._prepare_run(t, acc, dataset, last_dir, bool(cfg.resume))
        monitor, mode = str(t.monitor), str(t.monitor_mode)
        if self.validator is None:
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
                on_best=run.on_main(lambda _st: self._save(best_dir)),
                on_epoch_end=run.on_main(run.save_last),
                tracker=self.tracker if run.main else None,
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
                self._save(best_dir)
            self.load(best_dir)
        else:
            self.model.eval()

    def _follow_main_run_dir(self, acc) -> None:
        """Each rank composed its own Hydra run dir (their timestamps may differ): the main process's wins."""
        from accelerate.utils import broadcast_object_list

        if acc.num_processes > 1:
            (main_dir,) = broadcast_object_list([str(self.run_dir)])
            if Path(main_dir) != Path(self.run_dir):
                log.info("rank %d writes into the main process's run dir %s", acc.process_index, main_dir)
                self.run_dir = Path(main_dir)

    def _model_to_train(self, t, resume: bool, last_dir: Path):
        """The model to train, on the training device: the interrupted run's last weights, or a new one."""
        if resume:
            recover_dir(last_dir)  # a save cut between its two renames
            if not (last_dir / STATE).is_file():
                raise UserError(
                    f"resume=true but {last_dir / STATE} does not exist (point hydra.run.dir at the interrupted run)"
                )
            self.load(last_dir)
        else:
            self.model = self._build(self.class_names)
        check_input_size(self.family, self.model.config, self.imgsz)
        model = self.model.to(self.device)
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
        fam = FAMILIES[self.family]
        train_loader = loader(
            _DetectionDataset(dataset["train"], self.imgsz, aug, self.box_frame, fam),
            shuffle=True,
            generator=gen,
        )
        val_loader = loader(_DetectionDataset(dataset["val"], self.imgsz, None, self.box_frame, fam))
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
        self.model = acc.unwrap_model(model)  # what predict / the validator / the checkpoints use
        loaders = (train_loader, val_loader, dataset["val"])
        return _Run(self, acc, model, optimizer, scheduler, loaders, gen, last_dir, float(t.grad_clip), state)

    # -- inference ---------------------------------------------------------------------------------
    def load(self, checkpoint, device: str | None = None) -> None:
        path = Path(checkpoint)
        if path.is_dir() and not (path / META).is_file() and (path / "weights" / "best" / META).is_file():
            path = path / "weights" / "best"
        meta = _read_meta(path)
        self.family, self.imgsz, self.class_names = (
            meta["family"],
            int(meta["imgsz"]),
            list(meta["class_names"]),
        )
        self.box_frame = str(meta.get("box_frame", "canvas"))
        model_cls = _family(self.family)[1]
        # train.device decides for the run's own reloads
        self.device = self._train_device if device is None and self._train_device else resolve_device(device)
        try:  # safetensors only: a folder from others may hold a pickled pytorch_model.bin instead
            model = model_cls.from_pretrained(str(path), use_safetensors=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
            raise DataError(
                f"{path}: not a loadable {model_cls.__name__} run folder ({e.__class__.__name__}: {first_line(e, 160)})"
            ) from None
        self.model = model.to(self.device).eval()
        self._checkpoint = path

    def _options(self) -> dict:
        fam = FAMILIES[self.family]
        return {
            "score_mode": self.score_mode,
            "use_mask": bool(self.use_mask),
            "max_det": self.decode["max_det"],
            "box_frame": self.box_frame,
            "resize": fam.resize,
            "normalize": fam.normalize,
        }

    def set_half(self) -> None:
        self.half = True
        self._require().half()

    def predict(
        self, images: list[ImageInput], conf: float = EVAL_CONF, imgsz: int | None = None
    ) -> list[Detections]:
        net = GraphWrapper(self._require().eval(), self.use_mask, FAMILIES[self.family].ordered_topk)
        size = int(imgsz or self.imgsz)
        check_input_size(self.family, self.model.config, size)
        return self._predict_each(net, self.device, images, size, self._options(), conf)

    def benchmark_forward(self, imgsz: int | None = None):
        """A zero-argument callable running the model alone on one preprocessed image (latency protocol)."""
        model = self._require().eval()
        size = int(imgsz or self.imgsz)
        check_input_size(self.family, model.config, size)
        kwargs = {"pixel_values": torch.zeros(1, 3, size, size, device=self.device)}
        if self.use_mask:
            kwargs["pixel_mask"] = torch.ones(1, size, size, dtype=torch.long, device=self.device)
        return self._timed(model, **kwargs)

    # -- export (the contract of training.backends.base.Backend) -----------------------------------------
    def export_spec(self, imgsz: int | None = None, dynamic: bool = False) -> ExportSpec:
        """The model (moved to the CPU, frozen) wrapped to return plain ``(logits, pred_boxes)`` tensors; traced at one
        fixed input size (RF-DETR's position embeddings a constant of the graph for that size:
        :func:`~training.compat.transformers.fixed_position_embeddings`)."""
        # frozen, as ultralytics' export module is: nothing traces or counts gradients of it (torch's FLOP counter
        # stumbles on RF-DETR's parameters passed to a layer as they are: a leaf that requires grad under no_grad)
        model = self._require().cpu().eval().requires_grad_(False)
        self.device = torch.device("cpu")
        size = int(imgsz or self.imgsz)
        check_input_size(self.family, model.config, size)
        fixed_position_embeddings(model, size, size)
        inputs = ["pixel_values", "pixel_mask"] if self.use_mask else ["pixel_values"]
        return ExportSpec(
            self.name,
            size,
            list(self.class_names),
            inputs,
            ["logits", "pred_boxes"],
            self._options(),
            GraphWrapper(model, self.use_mask, FAMILIES[self.family].ordered_topk).eval(),
            str(self._checkpoint or ""),
            int8={"model_type": "transformer"},
        )

    @staticmethod
    def preprocess(image, imgsz: int, options: dict):
        # exports written before the families of the RT-DETR lineage: letterboxed and normalised
        pixels, mask, scale = preprocess_image(
            image, imgsz, options.get("resize", "letterbox"), options.get("normalize", True)
        )
        feeds = {"pixel_values": pixels[None].numpy()}
        if options.get("use_mask"):
            feeds["pixel_mask"] = mask[None].numpy().astype(np.int64)
        return feeds, (scale, image.size)

    @staticmethod
    def postprocess(outputs, ctx, imgsz: int, options: dict, conf: float = EVAL_CONF):
        scale, size = ctx
        return decode(
            torch.from_numpy(np.asarray(outputs[0][0])),
            torch.from_numpy(np.asarray(outputs[1][0])),
            scale,
            size,
            imgsz,
            options["score_mode"],
            conf,
            int(options["max_det"]),
            options.get("box_frame", "canvas"),  # exports written before the frame was recorded: canvas
        )

    @staticmethod
    def example_inputs(imgsz: int, options: dict, batch: int = 1) -> tuple:
        if options.get("use_mask"):
            return torch.rand(batch, 3, imgsz, imgsz), torch.ones(batch, imgsz, imgsz, dtype=torch.long)
        return (torch.rand(batch, 3, imgsz, imgsz),)
