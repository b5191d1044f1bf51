"""Config files from others never run code: an experiment or group file that names code for Hydra (a callback's
``_target_``) or for logging (a ``()`` factory, a handler ``class``) is refused before Hydra composes, with one line
naming the file and the key, exit code 2; our own configs and the sweep's best-trial file pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import CONF, run_module
from tests.test_untrusted_checkpoints import _Payload
from training.config_files import RefusedConfig


def _group_file(root: Path, text: str) -> Path:
    f = root / "extra" / "pwn.yaml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("# @package _global_\n" + text)
    return f


def test_a_callback_target_in_a_searchpath_file_never_runs(tmp_path):
    """The audit's chain: a group file from others adds a Hydra callback whose _target_ (torch.load, which Hydra's
    own target policy lets through) unpickles a payload. Without the vetting the marker appeared at run start."""
    marker = tmp_path / "PWNED"
    pickle_file = tmp_path / "p.pt"
    torch.save(
        {"x": _Payload(os.system, f"touch {marker}")}, pickle_file, _use_new_zipfile_serialization=False
    )
    d = tmp_path / "conf_from_others"
    f = _group_file(
        d,
        f"hydra:\n  callbacks:\n    pwn:\n      _target_: torch.load\n      f: {pickle_file}\n      weights_only: false\n",
    )
    r = run_module(
        "evaluation",
        f"hydra.searchpath=[file://{d}]",
        "+extra=pwn",
        f"checkpoint={tmp_path / 'none.pt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert not marker.exists(), "a config file ran code"
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert str(f) in line and "hydra.callbacks.pwn._target_" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, key",
    [
        ("hydra:\n  job_logging:\n    formatters:\n      x:\n        (): builtins.exec\n", "()"),
        ("hydra:\n  job_logging:\n    handlers:\n      x:\n        class: some.module.Handler\n", "class"),
        ("hydra:\n  launcher:\n    _target_: some.module.Launcher\n", "_target_"),
        ("train:\n  epochs: 2\nnested:\n  - {a: 1}\n  - {_target_: os.system}\n", "nested[1]._target_"),
        ('x:\n  "_tar\\x67et_": os.system\n', "x._target_"),  # a key spelt with an escape
        ("x:\n  _target_: [1]\n", "x._target_"),
    ],
)
def test_every_key_that_names_code_is_refused(tmp_path, text, key):
    from training.config_files import vet_config_files

    d = tmp_path / "c"
    f = _group_file(d, text)
    with pytest.raises(RefusedConfig) as e:
        vet_config_files(CONF, [f"hydra.searchpath=[file://{d}]", "+extra=pwn"])
    assert str(f) in str(e.value) and key in str(e.value) and "\n" not in str(e.value)
    # the same folder through --config-dir, and a searchpath that a vetted file adds
    with pytest.raises(RefusedConfig):
        vet_config_files(CONF, ["--config-dir", str(d)])
    hop = tmp_path / "hop"
    _group_file(hop, f"hydra:\n  searchpath: [file://{d}]\n")
    with pytest.raises(RefusedConfig):
        vet_config_files(CONF, [f"hydra.searchpath=[file://{hop}]"])


def test_own_configs_and_plain_experiments_pass(tmp_path):
    from training.config_files import vet_config_files

    d = tmp_path / "c"
    _group_file(
        d,
        "train:\n  epochs: 2\n  lr0: 0.01\nclasses_note: a key that merely contains the word\n"
        "hydra:\n  job_logging:\n    handlers:\n      file:\n        class: logging.FileHandler\n",
    )
    vet_config_files(CONF, ["experiment=quickstart"])  # conf/ holds our one callback _target_
    vet_config_files(CONF, [f"hydra.searchpath=[file://{d},pkg://hydra.conf]", "+extra=pwn"])
    with pytest.raises(RefusedConfig, match="experimental-rerun"):
        vet_config_files(CONF, ["--experimental-rerun", str(tmp_path / "config.pickle")])
