"""Structured configs: the key sets and types of config groups, registered in Hydra's ConfigStore.

The values live in ``conf/`` and nowhere else: every field here is ``MISSING`` and the group's YAML file sets it
(its ``defaults:`` list names the schema first). The schema makes Hydra refuse a key the group does not have,
from an experiment file as from the command line, and check types, so Python reads ``cfg.evaluation.conf_fixed``
without a fallback number of its own.

Every group has one except ``trainer/ultralytics``, which passes ``train.*`` to ultralytics: its own argument
table (``DEFAULT_CFG_DICT``, about 100 names that change between releases) is the schema, checked key by key
with "did you mean" suggestions in ``training/backends/ultralytics.py``, not a copy here that would go stale.
Hydra's struct mode rejects an unknown key there too; ``training.cli.run_cli`` turns Hydra's composition
errors into one line with suggestions and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class Decode:
    """One backend's entry of ``conf/decode/default.yaml``: raw outputs -> boxes."""

    iou: Optional[float] = MISSING  # noqa: UP045 (NMS IoU; null: the head needs no NMS)
    max_det: int = MISSING


@dataclass
class ErrorAnalysis:
    """``evaluation.errors`` (evaluation/error_analysis.py)."""

    iou: float = MISSING
    loc_iou: float = MISSING
    worst_k: int = MISSING
    area_bins: dict[str, Any] = MISSING  # name -> [low, high or null]
    aspect_bins: dict[str, Any] = MISSING


@dataclass
class PageDecision:
    """``evaluation.page`` (evaluation/pages.py): the page-level "signed?" operating point."""

    target_recall: float = MISSING
    choose_on: str = MISSING


@dataclass
class DetectionEvaluation:
    """``conf/evaluation/default.yaml`` (evaluation/evaluator.py, evaluation/run.py)."""

    splits: list[str] = MISSING
    conf_fixed: float = MISSING
    conf_min: float = MISSING
    imgsz: Any = MISSING  # ${train.imgsz}, or null: each model at its own training size
    batch: int = MISSING
    n_bootstrap: int = MISSING
    seed: int = MISSING
    ultralytics_metrics: bool = MISSING
    n_log_images: int = MISSING
    n_page_figures: int = MISSING
    exclude_near_duplicates: bool = MISSING  # score splits again without near-copies of train pages
    decode: dict[str, Decode] = MISSING  # backend -> its decoding (conf/decode/default.yaml)
    errors: ErrorAnalysis = MISSING
    page: PageDecision = MISSING


@dataclass
class ClassifierEvaluation:
    """``conf/evaluation/classifier.yaml`` (evaluation/classification.py)."""

    splits: list[str] = MISSING
    n_bootstrap: int = MISSING
    seed: int = MISSING
    save_misclassified: int = MISSING
    n_pages: int = MISSING


@dataclass
class Phase:
    epochs: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class ClassifierAugment:
    copies: int = MISSING  # offline augmented copies of each original training crop
    rotation: float = MISSING
    scale: list[float] = MISSING
    translate: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING
    saturation: float = MISSING
    hue: float = MISSING
    blur_p: float = MISSING
    blur_sigma: list[float] = MISSING


@dataclass
class Mining:
    rounds: int = MISSING
    k: int = MISSING
    epochs: int = MISSING
    lr: float = MISSING


@dataclass
class ClassifierTrainer:
    """``conf/trainer/classifier.yaml`` (training/classifier/trainer.py), mounted at ``train:``."""

    batch: int = MISSING
    workers: int = MISSING
    device: Any = MISSING  # auto | cpu | cuda | cuda:N | N
    stage1: Phase = MISSING
    stage2: Phase = MISSING
    patience: int = MISSING
    monitor: str = MISSING
    max_steps: Optional[int] = MISSING  # noqa: UP045 (OmegaConf reads the annotation at run time)
    augment: ClassifierAugment = MISSING
    mining: Mining = MISSING


@dataclass
class Data:
    """Keys of every ``conf/data`` option (training/data/loader.py)."""

    name: str = MISSING
    format: str = MISSING  # coco | yolo | hf | roboflow | synthetic
    splits: dict[str, str] = MISSING  # train / val / test -> the source's split (folder) name
    strict: bool = MISSING
    box_tolerance_px: float = MISSING
    max_image_pixels: Optional[int] = MISSING  # noqa: UP045
    cache_dir: Optional[str] = MISSING  # noqa: UP045


@dataclass
class CocoData(Data):
    root: str = MISSING
    annotation_file: str = MISSING


@dataclass
class YoloData(Data):
    yaml: str = MISSING


@dataclass
class HubData(Data):
    path: str = MISSING
    revision: Optional[str] = MISSING  # noqa: UP045


@dataclass
class RoboflowProject:
    workspace: str = MISSING
    project: str = MISSING
    version: int = MISSING
    api_key_env: str = MISSING


@dataclass
class RoboflowData(Data):
    roboflow: RoboflowProject = MISSING


@dataclass
class SyntheticPages:
    seed: int = MISSING
    pages: dict[str, int] = MISSING
    page: dict[str, Any] = MISSING  # PageConfig fields (training/data/synthetic.py); checked there


@dataclass
class SyntheticData(Data):
    synthetic: SyntheticPages = MISSING


@dataclass
class Licence:
    """``model.licence``: what a model may be used under, as SPDX identifiers (https://spdx.org/licenses/)."""

    code: str = MISSING  # the library that builds and trains it
    weights: str = MISSING  # its starting weights ("none": random init, nothing inherited)


@dataclass
class UltralyticsModel:
    """``conf/model`` of the ultralytics backend."""

    backend: str = MISSING
    name: str = MISSING
    licence: Licence = MISSING
    params_m: Optional[float] = MISSING  # noqa: UP045 (published parameter count, millions; null: debug models)
    arch: Optional[str] = MISSING  # noqa: UP045
    weights: Optional[str] = MISSING  # noqa: UP045
    synthetic_weights: Optional[str] = None  # noqa: UP045 (only models with a shipped checkpoint set it)
    upstream_weights: Optional[str] = None  # noqa: UP045 (what experiment=upstream fine-tunes from)
    decode: Decode = "${evaluation.decode.ultralytics}"  # type: ignore[assignment]  (the root's decoding)


@dataclass
class TransformersModel:
    """``conf/model`` of the transformers backend."""

    backend: str = MISSING
    name: str = MISSING
    licence: Licence = MISSING
    params_m: Optional[float] = MISSING  # noqa: UP045 (published parameter count, millions; null: debug models)
    family: str = MISSING  # training/backends/transformers.py FAMILIES: detr | conditional_detr | yolos | ...
    hub_id: Optional[str] = MISSING  # noqa: UP045
    weights: Optional[str] = MISSING  # noqa: UP045
    upstream_weights: Optional[str] = None  # noqa: UP045 (what experiment=upstream fine-tunes from)
    config: dict[str, Any] = MISSING  # transformers config fields for random init
    # backbone config for random init: ResNet fields (DETR families), or any transformers backbone by its model_type
    backbone: Optional[dict[str, Any]] = None  # noqa: UP045
    decode: Decode = "${evaluation.decode.transformers}"  # type: ignore[assignment]  (the root's decoding)


@dataclass
class Proposals:
    """``model.proposals`` of the classifier (training/classifier/proposals.py)."""

    colours: dict[str, list[list[list[int]]]] = MISSING  # name -> HSV [low, high] ranges (OpenCV units)
    close_frac: float = MISSING
    min_area_frac: float = MISSING
    max_area_frac: float = MISSING
    max_aspect: float = MISSING
    merge_x_frac: float = MISSING
    merge_y_frac: float = MISSING
    dedup_iou: float = MISSING


@dataclass
class ClassifierModel:
    """``conf/model/resnet18-classifier.yaml`` (training/classifier)."""

    backend: str = MISSING
    name: str = MISSING
    licence: Licence = MISSING
    params_m: Optional[float] = MISSING  # noqa: UP045 (published parameter count, millions)
    arch: str = MISSING
    classes: list[str] = MISSING
    weights: Optional[str] = MISSING  # noqa: UP045
    compat: bool = MISSING
    imgsz: int = MISSING
    normalize: str = MISSING
    dropout: float = MISSING
    proposals: Proposals = MISSING


@dataclass
class TransformersAugment:
    rotate_deg: float = MISSING
    scale: Optional[list[float]] = MISSING  # noqa: UP045
    brightness: float = MISSING
    contrast: float = MISSING
    blur: float = MISSING
    hflip: float = MISSING


@dataclass
class TransformersTrainer:
    """``conf/trainer/transformers.yaml`` (training/backends/transformers.py), mounted at ``train:``."""

    epochs: int = MISSING
    imgsz: int = MISSING
    batch: int = MISSING
    lr: float = MISSING
    lr_backbone: float = MISSING
    freeze_backbone: bool = MISSING
    weight_decay: float = MISSING
    scheduler: str = MISSING  # cosine | none
    grad_clip: float = MISSING
    amp: bool = MISSING
    precision: Optional[str] = MISSING  # noqa: UP045 (null | no | fp16 | bf16; null: train.amp decides)
    grad_accum: int = MISSING
    device: Any = MISSING
    workers: int = MISSING
    seed: int = MISSING
    eval_every: int = MISSING
    monitor: str = MISSING
    monitor_mode: str = MISSING
    patience: int = MISSING
    max_steps: Optional[int] = MISSING  # noqa: UP045
    augment: TransformersAugment = MISSING


@dataclass
class RecipeConfig:
    """``conf/recipe`` (training/augment): copy-paste and scan effects for the ultralytics detectors."""

    name: str = MISSING
    copy_paste: Optional[dict[str, Any]] = MISSING  # noqa: UP045 (PasteConfig fields; null: no paste)
    scan: Optional[list[Any]] = MISSING  # noqa: UP045 (albumentations entries; null: none)


@dataclass
class CropSynthetic:
    enabled: bool = MISSING
    seed: int = MISSING
    pages: dict[str, int] = MISSING
    page: dict[str, Any] = MISSING  # SynthConfig fields (training/classifier/synth.py); checked there


@dataclass
class CropDetection:
    enabled: bool = MISSING
    splits: dict[str, str] = MISSING
    max_per_split: Optional[int] = MISSING  # noqa: UP045


@dataclass
class Crops:
    """``conf/crops/default.yaml`` (training/classifier/crops.py)."""

    context: float = MISSING
    min_size: int = MISSING
    synthetic: CropSynthetic = MISSING
    detection: CropDetection = MISSING
    category_map: dict[str, str] = MISSING
    coco: list[Any] = MISSING  # [{file, split}]
    folders: list[Any] = MISSING  # [{root, split}]


@dataclass
class Logger:
    """``conf/logger`` (training/tracking.py). ``logger=none`` sets only ``type``; a root may still name the W&B
    group / job type its runs get with ``logger=wandb`` (export_benchmark.yaml), hence one schema for both."""

    type: str = MISSING  # none | wandb
    project: Optional[str] = None  # noqa: UP045
    entity: Optional[str] = None  # noqa: UP045
    name: Optional[str] = None  # noqa: UP045
    group: Optional[str] = None  # noqa: UP045
    job_type: Optional[str] = None  # noqa: UP045
    tags: Optional[list[str]] = None  # noqa: UP045
    mode: Optional[str] = None  # noqa: UP045 (auto | online | offline | disabled)
    init_timeout_s: Optional[float] = None  # noqa: UP045 (W&B's wait for its service before going offline)


@dataclass
class Heartbeat:
    heartbeat_s: int = MISSING
    grace_s: int = MISSING
    max_retry: int = MISSING


@dataclass
class Sweep:
    """``conf/sweep`` (training/sweep.py). Sampler / pruner hold Optuna's keyword arguments of the named class and
    the search space free-form override paths, so those are checked by their reader."""

    experiment: str = MISSING
    model: Optional[str] = MISSING  # noqa: UP045 (the model= of the experiment; null: the experiment's own)
    overrides: dict[str, Any] = MISSING
    metric: str = MISSING
    direction: str = MISSING  # maximize | minimize
    n_trials: int = MISSING
    study_name: str = MISSING
    storage: str = MISSING
    heartbeat: Heartbeat = MISSING
    sampler: dict[str, Any] = MISSING
    pruner: dict[str, Any] = MISSING
    prune_metric: dict[str, str] = MISSING  # backend -> the per-epoch metric a pruner reads
    search_space: dict[str, Any] = MISSING
    inert: dict[str, str] = MISSING  # parameter -> why it cannot change the result
    logger: str = MISSING  # none | wandb
    enqueue: list[Any] = MISSING  # trials to run first ({param: value})
    devices: Optional[list[Any]] = MISSING  # noqa: UP045 (worker k -> devices[k % len]; null: unpinned)
    seeds: list[int] = MISSING  # trials train at seeds[0]; base and best at every one (base-vs-best spread)


@dataclass
class Paths:
    """``conf/paths/default.yaml``."""

    output_dir: str = MISSING
    run_dir: Optional[str] = MISSING  # noqa: UP045 (API use and sweep trials; null: Hydra's run dir)


SCHEMAS = {
    ("data", "schema_coco"): CocoData,
    ("data", "schema_yolo"): YoloData,
    ("data", "schema_hf"): HubData,
    ("data", "schema_roboflow"): RoboflowData,
    ("data", "schema_synthetic"): SyntheticData,
    ("model", "schema_ultralytics"): UltralyticsModel,
    ("model", "schema_transformers"): TransformersModel,
    ("model", "schema_classifier"): ClassifierModel,
    ("trainer", "schema_transformers"): TransformersTrainer,
    ("recipe", "schema_recipe"): RecipeConfig,
    ("crops", "schema_crops"): Crops,
    ("logger", "schema_logger"): Logger,
    ("paths", "schema_paths"): Paths,
    ("sweep", "schema_sweep"): Sweep,
    ("evaluation", "schema_default"): DetectionEvaluation,
    ("evaluation", "schema_classifier"): ClassifierEvaluation,
    ("trainer", "schema_classifier"): ClassifierTrainer,
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent; ``import training`` does it)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
