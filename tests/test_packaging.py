"""The package installs like a library: the wheel carries the configs (as ``sigdet.conf``, found through Hydra's
``pkg://`` search path), the assets and the ``sigdet`` command, and predicts from a folder outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
import tomllib

from tests.conftest import EMBEDDED, OFFLINE_ENV, ROOT


def test_every_package_folder_is_in_the_wheel_list():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("sigdet", "training", "evaluation", "export")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found | {"sigdet.conf"} == listed


@pytest.mark.slow
def test_the_wheel_predicts_outside_the_checkout(tmp_path):
    dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("sigdet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sigdet/conf/predict.yaml" in names and "sigdet/conf/experiment/quickstart.yaml" in names
    assert any(n.startswith("training/assets/signatures-xc8up-mini/") for n in names)
    assert not any(n.startswith(("tests/", "conf/")) for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "sigdet = sigdet.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env = OFFLINE_ENV | {"PYTHONPATH": str(target), "CI": "true"}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import training.cli as e, sigdet; print(e.CONFIG_PATH); print(sigdet.__file__)",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0] == "pkg://sigdet.conf" and where[1].startswith(str(target)), where
    image = sorted((EMBEDDED / "test").glob("*.jpg"))[0]
    r = subprocess.run(
        [sys.executable, "-m", "sigdet", "predict", f"source={image}", "hydra.run.dir=run"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "run" / "pages.jsonl").is_file() and "pages signed" in r.stdout
    # the console script itself (pip wrote it into the target's bin/)
    script = target / "bin" / "sigdet"
    if script.is_file():
        r = subprocess.run(
            [sys.executable, str(script), "--help"], cwd=work, env=env, capture_output=True, text=True
        )
        assert r.returncode == 0 and "predict" in r.stdout
    assert os.listdir(work) == ["run"]
