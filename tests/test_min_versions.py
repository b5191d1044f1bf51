"""The lower bounds pyproject.toml states for the libraries whose private names training/compat/ touches
(ultralytics, transformers, accelerate) are releases the compat tests pass on: those exact releases, installed
beside this environment (pip --target, first on the path), run tests/test_compat.py and tests/test_accelerate.py.
Needs the package index; skipped without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BOUNDED = ("ultralytics", "transformers", "accelerate")
# what a lower-bound release needs that this environment may hold too new a version of (pip would pick these with
# it; --no-deps does not): transformers 5.17 refuses huggingface-hub 2.x at import
COMPANIONS = ["huggingface_hub>=1.5,<2"]


def lower_bounds() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", dep)
        if m and m.group(1) in BOUNDED:
            out[m.group(1)] = m.group(2)
    return out


def test_every_bounded_library_has_a_lower_bound():
    assert set(lower_bounds()) == set(BOUNDED)


@pytest.mark.slow
def test_the_compat_tests_pass_on_the_lower_bounds(tmp_path):
    site = tmp_path / "site"
    specs = [f"{name}=={version}" for name, version in lower_bounds().items()] + COMPANIONS
    env = {
        k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"
    }  # a machine's cap must not pick for us
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), *specs],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if r.returncode != 0:
        # a bound that names no release (mistyped, yanked) is this test's finding; an unreachable index is not
        assert "No matching distribution" not in r.stderr, r.stderr[-2000:]
        pytest.skip(f"pip could not fetch {specs} (no package index?): {r.stderr.strip().splitlines()[-1:]}")
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics"),
    }
    check = "import importlib, sys; print(*(importlib.import_module(n).__version__ for n in sys.argv[1:]))"
    versions = subprocess.run(
        [sys.executable, "-c", check, *lower_bounds()], capture_output=True, text=True, env=env, cwd=ROOT
    )
    got = [Version(v) for v in versions.stdout.split()]
    assert got == [Version(v) for v in lower_bounds().values()], versions.stdout + versions.stderr[-2000:]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_compat.py", "tests/test_accelerate.py"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:]
