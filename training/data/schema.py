"""The in-memory dataset every reader produces and every backend / evaluator consumes.

Boxes are COCO ``[x, y, w, h]`` in absolute pixels of the original image. A split keeps the file it was read
from so that every validation message can name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclass(frozen=True)
class Origin:
    """Where an entry was read from, as the user sees it: a file and an entry in it (``line 3``, ``images[4]``).

    Readers set it so that later checks can name the label file and line rather than the split's ``source``
    and an id the reader invented (YOLO ids are just counters).
    """

    file: str
    entry: str

    def __str__(self) -> str:
        return f"{self.file}: {self.entry}"


@dataclass(frozen=True)
class ImageRecord:
    id: int
    file: Path
    width: int
    height: int
    # not part of equality: the same image read from a COCO or a YOLO copy is the same record
    origin: Origin | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Annotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    # not part of equality: the same box read from a COCO or a YOLO copy is the same annotation
    origin: Origin | None = field(default=None, compare=False)

    @property
    def area(self) -> float:
        return float(self.bbox[2] * self.bbox[3])

    def to_coco(self, crowd: bool) -> dict:
        """The COCO JSON entry; ``crowd``: an ``iscrowd=1`` ignore region."""
        return {
            "id": self.id,
            "image_id": self.image_id,
            "category_id": self.category_id,
            "bbox": [float(v) for v in self.bbox],
            "area": self.area,
            "iscrowd": int(crowd),
        }


@dataclass
class DetectionSplit:
    """One split (train / val / test) of a detection dataset."""

    name: str
    source: str  # file (or hub id) the split was read from; named in error messages
    images: list[ImageRecord]
    annotations: list[Annotation]
    categories: list[Category]
    # COCO ``iscrowd=1`` boxes: ignore regions of the evaluation (a detection on one is neither a true nor a false
    # positive, as pycocotools scores them), never trained on as ordinary boxes
    crowd: list[Annotation] = field(default_factory=list)
    _by_image: dict[int, list[Annotation]] | None = field(default=None, repr=False, compare=False)

    @property
    def class_names(self) -> list[str]:
        """Category names in class-index order (sorted by category id)."""
        return [c.name for c in sorted(self.categories, key=lambda c: c.id)]

    def class_index(self) -> dict[int, int]:
        """Map category id -> contiguous class index (the order of ``class_names``)."""
        return {c.id: i for i, c in enumerate(sorted(self.categories, key=lambda c: c.id))}

    def annotations_for(self, image_id: int) -> list[Annotation]:
        if self._by_image is None:
            self._by_image = {im.id: [] for im in self.images}
            for a in self.annotations:
                self._by_image.setdefault(a.image_id, []).append(a)
        return self._by_image.get(image_id, [])

    def to_coco(self, file_names: str = "absolute") -> dict:
        """COCO JSON dict. ``file_names``: ``absolute`` paths or ``basename``."""
        return {
            "images": [
                {
                    "id": im.id,
                    "file_name": str(im.file) if file_names == "absolute" else im.file.name,
                    "width": im.width,
                    "height": im.height,
                }
                for im in self.images
            ],
            "annotations": [a.to_coco(crowd=False) for a in self.annotations]
            + [a.to_coco(crowd=True) for a in self.crowd],
            "categories": [{"id": c.id, "name": c.name, "supercategory": "none"} for c in self.categories],
        }
