"""Signature-detection research framework: data, backends, training loops, tracking.

``python -m training experiment=quickstart`` trains and evaluates a detector; see README.md.
"""

import os

from omegaconf import OmegaConf

# ultralytics pip-installs missing optional packages at run time unless told not to; dependencies are declared
# in pyproject.toml instead, so that a run never changes the environment behind the user's back.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from training.data.loader import asset_path

# ${asset:NAME} -> a dataset carried inside the package (the embedded default data).
if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset_path)

from training.config import register as _register_schemas

_register_schemas()  # the structured configs the conf/ groups name in their defaults lists

__all__ = ["asset_path"]
