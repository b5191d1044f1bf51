"""Stage 2 of the two-stage pipeline: a torchvision ResNet18 over crops, with its preprocessing defined once.

Checkpoints are ``{"state_dict", "classes", "imgsz", "normalize", "arch"}``. A bare state dict of the same
architecture (``fc = Linear(512, 3)``, classes signature / stamp / thumb, preprocessing resize + to-tensor
without normalisation: the published classifier) loads in compatibility mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from training.cli import ConfigError, DataError, UserError, first_line
from training.data.images import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

COMPAT_CLASSES = ("signature", "stamp", "thumb")


def resized(crop, imgsz: int) -> Image.Image:
    """One RGB crop (PIL or HxWx3 uint8) resized to ``imgsz`` square: the uint8 part of :func:`preprocess`."""
    im = crop if isinstance(crop, Image.Image) else Image.fromarray(np.ascontiguousarray(crop))
    return im.convert("RGB").resize((imgsz, imgsz), Image.BILINEAR)


def preprocess(crops: list, imgsz: int, normalize: str = "imagenet") -> torch.Tensor:
    """RGB crops (PIL or HxWx3 uint8) -> float batch: resize to ``imgsz`` square, scale to [0, 1], and with
    ``normalize="imagenet"`` standardise; ``"none"`` is the published classifier's resize + to-tensor.

    The arithmetic is in-place NumPy (the same float32 operations as torch's, bit for bit), not torch ops. Alone
    torch is a little faster (224 px crop: 0.65 vs 0.97 ms p50, resize 0.35 ms included), but between runs of
    another runtime its OpenMP pool wakes and spins against that runtime's threads: ONNX Runtime FP32, 2 threads,
    2-core Xeon, model p50 10.0 ms, end to end 16.0 ms with the torch arithmetic vs 11.3 ms with this one."""
    if normalize not in ("imagenet", "none"):
        raise ConfigError(f"model.normalize={normalize!r}: valid values are ['imagenet', 'none']")
    if not crops:
        return torch.zeros((0, 3, imgsz, imgsz))
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    x = np.stack([np.asarray(resized(c, imgsz), np.uint8) for c in crops]).astype(np.float32)
    x /= np.float32(255.0)
    if normalize == "imagenet":
        x -= mean
        x /= std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class RegionClassifier(nn.Module):
    """ResNet18 with a new ``fc``; :meth:`freeze_backbone` / :meth:`unfreeze` implement the two stages.

    A frozen backbone also keeps its BatchNorm statistics frozen (eval mode), otherwise "frozen" layers would
    still drift with the running means of the new data.
    """

    def __init__(
        self, classes: list[str], imgsz: int = 224, normalize: str = "imagenet", dropout: float = 0.0
    ):
        super().__init__()
        from torchvision.models import resnet18

        self.classes = list(classes)
        self.imgsz = int(imgsz)
        self.normalize = normalize
        self.net = resnet18(weights=None)
        self.net.fc = nn.Linear(512, len(self.classes))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.backbone_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return n.fc(self.dropout(torch.flatten(n.avgpool(x), 1)))

    def backbone_parameters(self):
        return [p for name, p in self.net.named_parameters() if not name.startswith("fc.")]

    def freeze_backbone(self) -> None:
        for p in self.backbone_parameters():
            p.requires_grad_(False)
        self.backbone_frozen = True
        self.train(self.training)

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        self.backbone_frozen = False
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.backbone_frozen:
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def predict_proba(self, crops: list, batch: int = 64) -> np.ndarray:
        """Class probabilities, shape (len(crops), n_classes)."""
        self.eval()
        out = []
        for i in range(0, len(crops), batch):
            x = preprocess(crops[i : i + batch], self.imgsz, self.normalize).to(self.device)
            out.append(torch.softmax(self(x), 1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def checkpoint(self) -> dict:
        return {
            "arch": "resnet18",
            "classes": self.classes,
            "imgsz": self.imgsz,
            "normalize": self.normalize,
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.checkpoint(), tmp)
        tmp.replace(path)  # never leave a half-written checkpoint behind
        return path


def _strip_prefix(sd: dict) -> dict:
    for prefix in ("module.", "model.", "net."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def is_classifier_checkpoint(obj) -> bool:
    """Whether a (safely) loaded checkpoint is one :func:`load_classifier` reads: ours (``arch``, or
    ``state_dict`` with ``classes``) or a published bare ResNet18 state dict (``fc.weight``). A ``state_dict``
    alone is any framework's wrapper (Lightning's, a training script's), not a classifier of ours."""
    return isinstance(obj, dict) and (
        obj.get("arch") == "resnet18" or ("state_dict" in obj and "classes" in obj) or "fc.weight" in obj
    )


def load_classifier(path: str | Path) -> RegionClassifier:
    """A checkpoint written by :meth:`RegionClassifier.save`, or a published bare state dict (compatibility)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: classifier checkpoint not found")
    from training.checkpoints import load_weights

    obj = load_weights(path, "classifier checkpoint", "cpu")  # weights_only: never runs code
    try:
        return _classifier_from(obj, path)
    except DataError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RuntimeError) as e:
        # the file's entries have other types or shapes than a checkpoint of ours (it comes from others)
        raise DataError(
            f"{path}: not a classifier checkpoint ({e.__class__.__name__}: {first_line(e, 160)})"
        ) from None


def _classifier_from(obj, path: Path) -> RegionClassifier:
    if isinstance(obj, dict) and "state_dict" in obj and "classes" in obj:
        classes = obj["classes"]
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{path}: 'classes' is {classes!r}, not a list of class names")
        model = RegionClassifier(
            list(classes), int(obj.get("imgsz", 224)), str(obj.get("normalize", "imagenet"))
        )
        sd = obj["state_dict"]
    elif isinstance(obj, dict):
        # published state dict: fc Linear(512, 3), resize + to-tensor without normalisation
        model = RegionClassifier(list(COMPAT_CLASSES), 224, "none")
        sd = obj
    else:
        raise DataError(f"{path}: expected a state dict, found {type(obj).__name__}")
    sd = _strip_prefix(dict(sd))
    fc = sd.get("fc.weight")
    if fc is None or tuple(fc.shape) != (len(model.classes), 512):
        raise DataError(
            f"{path}: 'fc.weight' has shape {None if fc is None else tuple(fc.shape)}, expected "
            f"({len(model.classes)}, 512) for classes {model.classes}"
        )
    missing, unexpected = model.net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise DataError(
            f"{path}: not a ResNet18 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def build_classifier(model_cfg) -> tuple[RegionClassifier, str]:
    """Model from the ``model:`` config and a note on where its weights came from.

    ``weights``: ``imagenet`` (torchvision's ResNet18 weights from the local torch cache, downloaded when online;
    random init with a warning otherwise), ``null`` (random init), or a checkpoint / published state dict path.
    """
    classes = list(model_cfg.classes)
    weights, compat = model_cfg.weights, bool(model_cfg.compat)
    if compat:
        if weights in (None, "imagenet"):
            raise ConfigError("model.compat=true loads a published state dict: set model.weights=PATH")
        model = load_classifier(str(weights))
        if model.normalize != "none" or list(model.classes) != list(COMPAT_CLASSES):
            log.warning("%s is a sigdet checkpoint; compat mode is for bare published state dicts", weights)
        return model, f"published state dict {weights} (compatibility mode)"
    model = RegionClassifier(
        classes,
        int(model_cfg.imgsz),
        str(model_cfg.normalize),
        float(model_cfg.dropout or 0.0),
    )
    if weights is None:
        return model, "random init"
    if str(weights) == "imagenet":
        from torchvision.models import ResNet18_Weights

        try:
            sd = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # offline and not in the torch cache
            log.warning(
                "ImageNet ResNet18 weights unavailable (%s: %s); training from random init. Put "
                "resnet18-f37072fd.pth in $TORCH_HOME/hub/checkpoints to use them offline.",
                e.__class__.__name__,
                str(e).splitlines()[0][:120] if str(e) else "",
            )
            return model, "random init (ImageNet weights unavailable)"
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        model.net.load_state_dict(sd, strict=False)
        return model, "ImageNet (torchvision IMAGENET1K_V1)"
    loaded = load_classifier(str(weights))
    if list(loaded.classes) != classes:
        raise ConfigError(
            f"{weights}: checkpoint classes {loaded.classes} differ from model.classes {classes}"
        )
    model.net.load_state_dict(loaded.net.state_dict())
    return model, f"checkpoint {weights}"
