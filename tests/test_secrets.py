"""Secrets never reach disk (Hydra's run files, our config.yaml, W&B), a refused run dir is left alone, and
WANDB_MODE wins over WANDB_API_KEY."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, compose_cfg
from training.cli import ConfigError
from training.tracking import MASK, mask_text, mask_url_credentials, redact, wandb_mode

PASSWORD = "s3cr3t-Pw"
# SIGDET_STORAGE would replace the sweep's storage override under test
ENV = {k: v for k, v in os.environ.items() if k != "SIGDET_STORAGE"} | {
    "YOLO_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "WANDB_SILENT": "true",
}
ROOTS_WITH_RUN_DIR = ["train", "evaluate", "export", "export_benchmark", "model_selection", "sweep"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


# -- masking -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://user:s3cret@host/db", "postgresql://user:***@host/db"),
        ("sweep.storage=postgresql://u:p@ss/w:rd@h:5432/db", "sweep.storage=postgresql://u:***@h:5432/db"),
        ("s://me@corp.com:pw@host", "s://me@corp.com:***@host"),
        ("redis://:pw@host:6379", "redis://:***@host:6379"),
        # Hydra escapes the `:`s of a value in a -m sweep's job overrides
        (
            r"sweep.storage=postgresql\://u\:pw@127.0.0.1\:1/db",
            r"sweep.storage=postgresql\://u\:***@127.0.0.1\:1/db",
        ),
        ("a://u:p1@h1,b://v:p2@h2", "a://u:***@h1,b://v:***@h2"),
        ("logger.api_key=abc", "logger.api_key=***"),
        ("++data.hf_token=abc,def", "++data.hf_token=***"),
        ("a=1,b.password=x,c=2", "a=1,b.password=***"),
        ("https://host/x?token=abc&b=1", "https://host/x?token=***"),
        ("hydra.job.env_set.PGPASSWORD=abc", "hydra.job.env_set.PGPASSWORD=***"),
        # not secrets
        ("postgresql://u@127.0.0.1:1/db,postgresql://u@127.0.0.1:2/db", None),
        ("sqlite:///outputs/sweeps/x/study.db", None),
        ("train.num_detection_tokens=100", None),
        ("data.token_env=HF_TOKEN", None),
        ("https://github.com/a@b", None),
    ],
)
def test_mask_text(text, masked):
    assert mask_text(text) == (text if masked is None else masked)


USER = st.from_regex(r"[A-Za-z0-9._%+\-@]{0,12}", fullmatch=True)
HOST = st.from_regex(r"[a-z0-9.\-]{1,20}(:[0-9]{1,5})?", fullmatch=True)
PATH = st.from_regex(r"(/[A-Za-z0-9_.\-]{0,12}){0,3}", fullmatch=True)


@given(user=USER, password=st.text(min_size=1).filter(lambda p: "://" not in p), host=HOST, path=PATH)
def test_no_url_password_survives(user, password, host, path):
    """Any password (raw `@`, `:`, `/`, `,token=`, newlines...) is masked, and only the password."""
    url, masked = f"postgresql://{user}:{password}@{host}{path}", f"postgresql://{user}:{MASK}@{host}{path}"
    assert mask_url_credentials(url) == masked
    assert mask_text(f"sweep.storage={url}") == f"sweep.storage={masked}"
    assert mask_text(f"a=1,sweep.storage={url},b=2") == f"a=1,sweep.storage={masked},b=2"

    # Hydra's escaped form in a -m sweep's job overrides
    def esc(t: str) -> str:
        return t.replace(":", "\\:")

    assert mask_text(esc(url)) == f"{esc(f'postgresql://{user}:')}{MASK}@{esc(host)}{path}"


@given(
    key=st.sampled_from(["token", "api_key", "hf_token", "password", "secret", "credentials"]),
    value=st.text(min_size=1),
)
def test_no_secret_key_value_survives(key, value):
    for text in (f"logger.{key}={value}", f"+{key}={value}", f"x=1,a.{key}={value}"):
        masked = mask_text(text)
        assert masked.endswith(f"{key}={MASK}") and masked.count(MASK) == 1


def test_redact_masks_keys_urls_env_values_and_overrides(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    cfg = {
        "storage": f"postgresql://u:{PASSWORD}@h/db",
        "data": {"hf_token": "literal", "token_env": "HF_TOKEN", "repo": "hf_abcdefghijklmnop"},
        "overrides": ["x.y=hf_abcdefghijklmnop", "lr=0.1"],
        "epochs": 3,
    }
    out = redact(cfg)
    assert out == {
        "storage": "postgresql://u:***@h/db",
        "data": {"hf_token": MASK, "token_env": "HF_TOKEN", "repo": MASK},
        "overrides": ["x.y=***", "lr=0.1"],
        "epochs": 3,
    }


def test_save_config_masks_a_resolved_env_url(tmp_path, monkeypatch):
    from training.train import save_config

    monkeypatch.setenv("SIGDET_TEST_DB", f"postgresql://u:{PASSWORD}@h/db")
    cfg = compose_cfg("train", ["+storage=${oc.env:SIGDET_TEST_DB}"], tmp_path)
    path = save_config(cfg, tmp_path)
    assert PASSWORD not in path.read_text() and "postgresql://u:***@h/db" in path.read_text()


# -- Hydra's run files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_hydra_writes_no_run_files_of_its_own(name):
    """Every root: Hydra's .hydra/ writer (clear text) is off; the ones with a run dir get ours instead."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(name, return_hydra_config=True)
    assert cfg.hydra.output_subdir is None


@pytest.mark.parametrize("name", ROOTS_WITH_RUN_DIR)
def test_roots_write_run_files_masked_in_hydras_layout(name):
    """Hydra's own writer is off and ours is on; for a config without secrets our text is Hydra's text."""
    from hydra import compose, initialize_config_dir

    from training.runfiles import masked_yaml

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(name, return_hydra_config=True)
    assert cfg.hydra.output_subdir is None
    assert cfg.hydra.callbacks.run_files._target_ == "training.runfiles.RunFiles"
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert masked_yaml(task) == OmegaConf.to_yaml(task)
    assert masked_yaml(OmegaConf.masked_copy(cfg, "hydra")) == OmegaConf.to_yaml(
        OmegaConf.masked_copy(cfg, "hydra")
    )


def test_run_files_are_hydras_own_without_secrets(tmp_path):
    """Hydra's writer switched back on beside ours: a run without secrets gets byte-identical files (and a
    warning that Hydra's are unmasked)."""
    r = cli(
        "training.sweep",
        "sweep=quickstart_tiny",
        "sweep.storage=postgresql://u@127.0.0.1:1/db",
        f"paths.output_dir={tmp_path}",
        "hydra.output_subdir=.hydra_own",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    run_dir = tmp_path / "sweeps" / "quickstart_tiny"
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (run_dir / ".hydra" / name).read_bytes() == (run_dir / ".hydra_own" / name).read_bytes(), name
    assert "Hydra wrote its run files there unmasked" in r.stdout + r.stderr


def test_password_override_reaches_no_file(tmp_path):
    r = cli(
        "training.sweep",
        "sweep=quickstart_tiny",
        f"sweep.storage=postgresql://u:{PASSWORD}@127.0.0.1:1/db",  # nothing listens on port 1
        f"paths.output_dir={tmp_path}",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: sweep.storage" in r.stderr and "Traceback" not in r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    run_dir = tmp_path / "sweeps" / "quickstart_tiny"
    assert files_holding(tmp_path, PASSWORD) == []
    # the files are there, in Hydra's layout, masked
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert "sweep.storage=postgresql://u:***@127.0.0.1:1/db" in overrides
    assert (
        OmegaConf.load(run_dir / ".hydra" / "config.yaml").sweep.storage
        == "postgresql://u:***@127.0.0.1:1/db"
    )


def test_multirun_files_are_masked(tmp_path):
    """-m: Hydra's multirun.yaml and each job's .hydra/ (Hydra escapes the URL's `:`s there) are masked too."""
    r = cli(
        "training.sweep",
        "-m",
        "sweep=quickstart_tiny",
        f"sweep.storage=postgresql://u:{PASSWORD}@127.0.0.1:1/db,postgresql://u:{PASSWORD}@127.0.0.1:2/db",
        f"paths.output_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'multi'}",
    )
    assert r.returncode == 2, r.stderr[-2000:]
    multirun = tmp_path / "multi" / "multirun.yaml"
    assert multirun.is_file() and not multirun.is_symlink()
    assert "postgresql://u:***@127.0.0.1" in multirun.read_text()
    assert (tmp_path / "multi" / "0" / ".hydra" / "overrides.yaml").is_file()
    assert files_holding(tmp_path, PASSWORD) == []


def test_refused_run_dir_is_left_alone(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"metrics": {"val/f1": 0.5}}\n')
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run_dir / "train.log").write_text("the original run's log\n")
    (run_dir / "__main__.log").write_text("Hydra's job log of the original run\n")
    for p in run_dir.rglob("*"):
        os.utime(p, (1_000_000_000, 1_000_000_000))  # any rewrite moves the mtime
    before = snapshot(run_dir)
    r = cli("training", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2 and "already holds a finished run" in r.stderr, r.stderr[-2000:]
    assert snapshot(run_dir) == before


def test_interrupted_run_dir_without_resume_is_left_alone(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "weights" / "last.pt").write_bytes(b"not really a checkpoint")
    before = snapshot(run_dir)
    r = cli("training", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2 and "resume=true" in r.stderr, r.stderr[-2000:]
    assert snapshot(run_dir) == before and sorted(p.name for p in run_dir.iterdir()) == ["weights"]


# -- W&B -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "configured", "mode"),
    [
        ({"WANDB_API_KEY": "fake", "WANDB_MODE": "offline"}, "auto", "offline"),
        ({"WANDB_API_KEY": "fake", "WANDB_MODE": "offline"}, "online", "offline"),
        ({"WANDB_MODE": "disabled"}, "auto", "disabled"),
        ({"WANDB_MODE": "dryrun"}, "online", "dryrun"),
        ({"WANDB_API_KEY": "fake"}, "auto", "online"),
        ({}, "auto", "offline"),
        ({"WANDB_API_KEY": "fake"}, "offline", "offline"),
        ({}, "online", "online"),
    ],
)
def test_wandb_mode(monkeypatch, env, configured, mode):
    for k in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got, why = wandb_mode(configured)
    assert got == mode
    assert ("WANDB_MODE" in why) == ("WANDB_MODE" in env)


def test_wandb_mode_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offlne")
    with pytest.raises(ConfigError, match="WANDB_MODE='offlne'"):
        wandb_mode("auto")
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ConfigError, match="logger.mode='sometimes'"):
        wandb_mode("sometimes")


def test_wandb_mode_env_wins_over_api_key(tmp_path, monkeypatch, caplog):
    """WANDB_API_KEY set and WANDB_MODE=offline: an offline run (no network; an online try would fail on the
    unreachable base URL instead of hanging)."""
    from training.tracking import WandbTracker

    monkeypatch.setenv("WANDB_API_KEY", "fake" * 10)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "20")  # bounded, should a regression try to go online
    with caplog.at_level("INFO", logger="training.tracking"):
        tracker = WandbTracker(
            {"storage": f"postgresql://u:{PASSWORD}@h/db"}, tmp_path, project="p", mode="auto"
        )
    tracker.log_metrics({"val/f1": 0.5}, step=1)
    tracker.finish()
    assert tracker.mode == "offline"
    assert "W&B mode offline (WANDB_MODE=offline in the environment, over logger.mode=auto)" in caplog.text
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    assert files_holding(tmp_path, PASSWORD) == []


def test_wandb_unreachable_goes_offline_instead_of_dying(monkeypatch, tmp_path, caplog):
    """A key set and no route to the service (here a loopback port nothing listens on: no traffic leaves the
    machine): the run goes on offline within the configured time and says so in one line (issue 40)."""
    import logging
    import time

    from training.tracking import WandbTracker

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="training.tracking"):
        tracker = WandbTracker({"a": 1}, tmp_path, project="p", init_timeout_s=3)
    try:
        assert tracker.mode == "offline"
        tracker.log_metrics({"val/mAP50": 0.5}, step=1)
    finally:
        tracker.finish()
    assert time.monotonic() - t0 < 80  # W&B alone waited ~107 s and then raised
    (line,) = [r.getMessage() for r in caplog.records if "W&B unreachable" in r.getMessage()]
    assert "wandb sync" in line and "\n" not in line
    assert list((tmp_path / "wandb").glob("offline-run-*"))
