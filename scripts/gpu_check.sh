#!/usr/bin/env bash
# The GPU-VM check in one command (scripts/gpu_check.py says what each step proves).
#
#   bash scripts/gpu_check.sh --out DIR [--wheels DIR] [--dry-run] [--budget SECONDS]
#
# --wheels DIR: the folder scripts/gpu_wheels.sh filled on a machine with the package index; installed here without
# the network into a scratch site-packages (nothing in the image is replaced). --dry-run: on a CPU machine, every
# CUDA step reported as "no CUDA" in the same report (the slow tests run this).
set -uo pipefail
cd "$(dirname "$0")/.."

args=() wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --wheels=*) wheels="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

py="${PYTHON:-python3}"
if [ -n "$wheels" ]; then
  site="$(mktemp -d)/site"
  t0=$(date +%s)
  if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl; then
    echo "error: installing the wheels of $wheels failed" >&2
    exit 2
  fi
  echo "installed $(ls -1 "$wheels"/*.whl | wc -l) wheels in $(( $(date +%s) - t0 )) s"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$py" scripts/gpu_check.py "${args[@]}"
