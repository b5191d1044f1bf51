"""Data layer: readers (COCO, YOLO, HF, Roboflow), validation, conversion cache."""

from training.data.loader import Dataset, asset_path, cache_root, load_dataset, prepare_yolo
from training.data.schema import Annotation, Category, DetectionSplit, ImageRecord

__all__ = [
    "Annotation",
    "Category",
    "Dataset",
    "DetectionSplit",
    "ImageRecord",
    "asset_path",
    "cache_root",
    "load_dataset",
    "prepare_yolo",
]
