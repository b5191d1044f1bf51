#!/usr/bin/env bash
# The wheels a bare GPU machine lacks for scripts/gpu_check.sh, downloaded here (a CPU machine with the package
# index) for the GPU image's Python (3.12, manylinux x86-64) into one folder to carry along (at most 64 MiB).
#
#   bash scripts/gpu_wheels.sh [DIR]          # default .whl (add /.whl/ to .git/info/exclude: it is not committed)
#
# The GPU image already has torch, torchvision, transformers, accelerate, timm, onnx, onnxruntime (CPU), opencv,
# numpy, scipy, matplotlib, pillow, pyyaml, psutil, requests. Missing there, and fetched here: ultralytics, Hydra,
# pycocotools, Optuna, albumentations, pypdfium2, pi-heif and what each needs at run time. Each is pinned to the version this
# environment has installed (the one the tests ran with), else the newest. Left out, with the reason the check's
# report gives: openvino / nncf (about 60 MB: CPU runtimes, not what a GPU check is for), onnxruntime-gpu and
# tensorrt (hundreds of MB each, over the 64 MiB a call may carry), polars (a 54 MB runtime; ultralytics imports it
# for its plots and for results.csv, which our trainer reads with the stdlib instead).
set -euo pipefail

out="${1:-.whl}"
py="${PYTHON:-python3}"
limit_mib=64
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# name: what needs it
packages=(
  ultralytics ultralytics-thop                                 # the YOLO / RT-DETR backend
  hydra-core omegaconf                                         # every entry point (antlr4 below: sdist only)
  pycocotools                                                  # the evaluator
  optuna alembic sqlalchemy colorlog mako                      # sweeps (model selection imports the sweep module)
  albumentations albucore pydantic pydantic-core annotated-types typing-inspection stringzilla simsimd  # the recipe
  pypdfium2                                                    # predict on PDFs
  pi-heif                                                      # HEIC / HEIF pages (every image reader imports it)
)

pin() {  # name==version of this environment's install, else the bare name (the newest)
  local v
  v="$("$py" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')"
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

mkdir -p "$out"
for name in "${packages[@]}"; do
  spec="$(pin "$name")"
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$out" "$spec"
done
# antlr4-python3-runtime (Hydra's parser) is published as an sdist only: build its pure-Python wheel here
"$py" -m pip wheel --quiet --no-deps -w "$out" "$(pin antlr4-python3-runtime)"

total=$(du -sb "$out" | cut -f1)
ls -1 "$out"
echo "$(ls -1 "$out" | wc -l) wheels, $((total / 1024 / 1024)) MiB in $out"
if [ "$total" -gt $((limit_mib * 1024 * 1024)) ]; then
  echo "error: $out is over the $limit_mib MiB a device call may carry" >&2
  exit 1
fi
