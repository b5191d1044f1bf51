"""Optuna sweeps: search space, pruning, failures, shared storages, killed workers, summary."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf, open_dict
from optuna.trial import TrialState

from tests.conftest import CONF, ROOT, compose_cfg
from training.sweep import PruningTracker, as_overrides, optimize, suggest
from training.tracking import Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_upstream_search_space_is_the_published_one():
    cfg = compose_cfg("sweep", [])
    s = cfg.sweep
    assert s.n_trials == 20 and s.direction == "maximize" and s.metric == "val/f1" and s.sampler.name == "tpe"
    assert s.experiment == "upstream" and s.model == "yolov8s"
    space = OmegaConf.to_container(s.search_space)
    assert space["train.dropout"] == {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}
    assert (
        space["train.lr0"]["log"] is True
        and space["train.lr0"]["low"] == 1e-5
        and space["train.lr0"]["high"] == 1e-1
    )
    assert space["train.box"]["step"] == 1.0 and space["train.cls"]["step"] == 0.2
    assert space["train.optimizer"]["choices"] == ["AdamW", "RMSProp"]
    assert "train.dropout" in s.inert
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    params = suggest(study.ask(), s.search_space)
    assert set(params) == set(space) and params["train.optimizer"] in ("AdamW", "RMSProp")
    assert all("=" in o for o in as_overrides(params))


def test_pruning_tracker_reports_and_prunes():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    seen = []

    class Inner(Tracker):
        def log_metrics(self, metrics, step=None):
            seen.append((step, dict(metrics)))

    tr = PruningTracker(Inner(), trial, "ultralytics/f1")
    tr.log_metrics({"ultralytics/f1": 0.9, "x": 1}, step=1)
    with pytest.raises(optuna.TrialPruned):
        tr.log_metrics({"ultralytics/f1": 0.1}, step=2)
    assert len(seen) == 2 and tr.reported == 2  # the run's own tracker still got everything


def test_failed_pruned_and_nan_trials_do_not_stop_the_study(tmp_path):
    """Trial 1 crashes, trial 2 is pruned, trial 3 returns NaN: the study still runs n_trials."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        from hydra import compose

        cfg = compose(
            "sweep", overrides=["sweep=quickstart_tiny", f"sweep.storage=sqlite:///{tmp_path}/s.db"]
        )
        scfg = cfg.sweep
        with __import__("omegaconf").open_dict(scfg):
            scfg.pruner.name = "threshold"
            scfg.pruner.lower = 0.5
            scfg.n_trials = 5

        def fake_run(train_cfg, wrap):
            n = int(Path(train_cfg.paths.run_dir).name)
            tracker = wrap(Tracker())
            if n == 1:
                raise RuntimeError("deliberate crash")
            if n == 2:
                tracker.log_metrics({"ultralytics/f1": 0.1}, step=1)  # below the threshold: pruned
            if n == 3:
                return {"val/f1": math.nan}
            tracker.log_metrics({"ultralytics/f1": 0.8}, step=1)
            return {"val/f1": 0.7 + n / 100, "val/mAP50": 0.5}

        study = optimize(scfg, tmp_path, fake_run)
    states = [t.state for t in study.trials]
    assert states == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert study.best_trial.number == 4 and study.best_trial.user_attrs["val/mAP50"] == 0.5


def _sweep_cmd(tmp_path, *extra):
    return [
        sys.executable,
        "-m",
        "training.sweep",
        "sweep=quickstart_tiny",
        f"paths.output_dir={tmp_path}",
        f"+sweep.overrides.data.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


E2E_SWEEP = """
defaults:
  - quickstart_tiny
  - _self_
study_name: e2e_tiny
n_trials: 3
# epochs 3 runs into the threshold pruner at epoch 3; the bogus optimizer makes ultralytics raise
search_space:
  train.epochs: {type: categorical, choices: [2, 3]}
  train.optimizer: {type: categorical, choices: [AdamW, NotAnOptimizer]}
pruner: {name: threshold, upper: -1.0, n_warmup_steps: 3}
enqueue:
  - {train.epochs: 2, train.optimizer: AdamW}
  - {train.epochs: 3, train.optimizer: AdamW}
  - {train.epochs: 2, train.optimizer: NotAnOptimizer}
"""


@pytest.mark.slow
def test_tiny_sweep_end_to_end_with_pruned_and_failed_trials(tmp_path):
    """Real tiny trainings: one completes, one is pruned at epoch 3, one fails; then the summary."""
    conf = tmp_path / "conf" / "sweep"
    conf.mkdir(parents=True)
    (conf / "e2e_tiny.yaml").write_text(E2E_SWEEP)
    cmd = [
        sys.executable,
        "-m",
        "training.sweep",
        "sweep=e2e_tiny",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"paths.output_dir={tmp_path}",
        f"+sweep.overrides.data.cache_dir={tmp_path / 'cache'}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "sweeps" / "e2e_tiny"
    study = optuna.load_study(study_name="e2e_tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert study.trials[1].last_step == 3
    for f in (
        "summary.md",
        "trials.csv",
        "base_vs_best.csv",
        "history.png",
        "experiment/e2e_tiny_best.yaml",
        "base/seed_0/metrics.json",
        "trials/0000/metrics.json",
    ):
        assert (out / f).exists(), f
    md = (out / "summary.md").read_text()
    assert (
        "Base model vs best trial" in md
        and "difference (points)" in md
        and "1 pruned" in md
        and "1 fail" in md
    )
    # the best parameters compose as an experiment
    best = compose_cfg(
        "train", [f"hydra.searchpath=[file://{out}]", "experiment=e2e_tiny_best"], tmp_path / "c"
    )
    assert best.train.epochs == 2 and best.train.optimizer == "AdamW"
    # running the same command again resumes: the study is complete, nothing more runs
    r = subprocess.run([*cmd, "mode=optimize"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    assert len(optuna.load_study(study_name="e2e_tiny", storage=f"sqlite:///{out / 'study.db'}").trials) == 3


def run_workers(cmd: list[str], n: int) -> None:
    """Start ``n`` copies of the same sweep command at once (worker k gets SIGDET_WORKER=k); all must succeed."""
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(os.environ, SIGDET_WORKER=str(i)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]


def _journal_study(path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(
        study_name="quickstart_tiny", storage=JournalStorage(JournalFileBackend(str(path)))
    )


@pytest.mark.slow
def test_two_workers_share_a_journal_study(tmp_path):
    journal = tmp_path / "journal.log"
    cmd = _sweep_cmd(
        tmp_path,
        "sweep.n_trials=4",
        "mode=optimize",
        f"sweep.storage=journal://{journal}",
        "sweep.overrides.train.epochs=1",
    )
    run_workers(cmd, 2)
    trials = _journal_study(journal).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials) >= 4
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers ran trials


@pytest.mark.slow
def test_killed_worker_leaves_the_study_completable(tmp_path):
    journal = tmp_path / "journal.log"
    cmd = _sweep_cmd(
        tmp_path,
        "sweep.n_trials=2",
        "mode=optimize",
        f"sweep.storage=journal://{journal}",
        "sweep.overrides.train.epochs=3",
    )
    victim = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if any(t.state == TrialState.RUNNING for t in _journal_study(journal).trials):
                break
        except Exception:  # the study is not created yet
            continue
    time.sleep(3)  # let it get into training
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = _journal_study(journal).trials
    lost = [t for t in trials if t.user_attrs.get("pid") == victim.pid]
    assert lost and all(t.state == TrialState.FAIL for t in lost)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) >= 1
    assert not any(t.state == TrialState.RUNNING for t in trials)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SIGDET_TEST_POSTGRES_URL"),
    reason="no PostgreSQL server (set SIGDET_TEST_POSTGRES_URL)",
)
def test_two_workers_share_a_postgres_study(tmp_path):
    url = os.environ["SIGDET_TEST_POSTGRES_URL"]
    name = f"pg_{os.getpid()}_{int(time.time())}"
    cmd = _sweep_cmd(
        tmp_path,
        "sweep.n_trials=4",
        "mode=optimize",
        f"sweep.storage={url}",
        f"sweep.study_name={name}",
        "sweep.overrides.train.epochs=1",
    )
    run_workers(cmd, 2)
    trials = optuna.load_study(study_name=name, storage=url).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4
    assert len({t.user_attrs["pid"] for t in trials}) == 2


def test_trial_runs_are_grouped_by_study_for_wandb(tmp_path):
    from training.sweep import compose_run

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        from hydra import compose

        cfg = compose("sweep", overrides=["sweep=quickstart_tiny", "sweep.logger=wandb"])
        run = compose_run(cfg.sweep, ["train.lr0=0.01"], tmp_path / "t", "trial-7")
    assert (
        run.logger.type == "wandb" and run.logger.group == "quickstart_tiny" and run.logger.name == "trial-7"
    )
    assert "quickstart_tiny" in run.logger.tags and run.train.lr0 == 0.01 and run.train.epochs == 2


@pytest.mark.parametrize(
    "name, value",
    [
        ("hydra.callbacks.x._target_", "os.system"),  # a key outside the search space
        ("train.optimizer", "${oc.env:HOME}"),  # a choice the search space does not have
        ("train.lr0", 1.0e6),  # out of range
    ],
)
def test_summary_writes_only_search_space_values_from_the_shared_storage(tmp_path, name, value):
    """The storage is shared by the workers (a database): its best trial's parameters go into an experiment file
    that is then run, so a parameter the search space cannot give is refused, and no file is written."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from evaluation.sweep_report import summarize
    from training.cli import DataError

    storage = f"sqlite:///{tmp_path}/s.db"
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        from hydra import compose

        scfg = compose("sweep", overrides=["sweep=quickstart_tiny", f"sweep.storage={storage}"]).sweep
    assert "train.lr0" in scfg.search_space and "train.optimizer" in scfg.search_space
    study = optuna.create_study(study_name=str(scfg.study_name), storage=storage, direction="maximize")
    dist = (
        FloatDistribution(0.0, 2.0e6)
        if isinstance(value, float)
        else CategoricalDistribution([value, "AdamW"])
    )
    study.add_trial(optuna.trial.create_trial(params={name: value}, distributions={name: dist}, value=0.9))
    with pytest.raises(DataError, match=f"parameter {name}="):
        summarize(scfg, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*.yaml"))
    # the same study with a value the search space gives is summarised
    ok = optuna.create_study(study_name="ok", storage=storage, direction="maximize")
    ok.add_trial(
        optuna.trial.create_trial(
            params={"train.optimizer": "AdamW"},
            distributions={"train.optimizer": CategoricalDistribution(["AdamW", "RMSProp"])},
            value=0.9,
        )
    )
    with open_dict(scfg):
        scfg.study_name = "ok"
    summarize(scfg, tmp_path / "out")
    assert "optimizer: AdamW" in (tmp_path / "out" / "experiment" / "ok_best.yaml").read_text()


def test_dead_trial_check_skips_attributes_no_worker_wrote():
    """fail_dead_local_trials reads host / pid from the shared storage: a pid of another type is skipped, never a
    traceback that stops every worker."""
    import socket

    from training.sweep import fail_dead_local_trials

    study = optuna.create_study()
    for pid in ("abc", None, [1]):
        t = study.ask()
        t.set_user_attr("host", socket.gethostname())
        t.set_user_attr("pid", pid)
    fail_dead_local_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 3


def test_storage_in_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    """A sqlite storage whose folder cannot be written (issue 40): refused before any trial, one line naming the
    folder (root writes anywhere, so the check is faked at os.access)."""
    import training.sweep as sweep
    from training.cli import ConfigError

    real = os.access
    monkeypatch.setattr(sweep.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    with pytest.raises(ConfigError, match=f"sweep.storage: folder {tmp_path} is not writable") as e:
        sweep.make_storage(f"sqlite:///{tmp_path}/study.db")
    assert "\n" not in str(e.value)


def test_a_database_that_refuses_writes_is_one_line(tmp_path, monkeypatch):
    """A study database that refuses writes (read-only file, full disk, locked): one line, not SQLAlchemy's stacked
    tracebacks. The refusal is SQLAlchemy's OperationalError, raised here at create_study (root writes anywhere)."""
    import optuna

    from training.cli import UserError
    from training.sweep import optimize

    class OperationalError(Exception):  # what sqlalchemy.exc raises, by name
        pass

    def refuse(**_):
        raise OperationalError(
            "(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: INSERT ...]"
        )

    monkeypatch.setattr(optuna, "create_study", refuse)
    scfg = compose_cfg(
        "sweep", ["sweep=quickstart_tiny", f"sweep.storage=sqlite:///{tmp_path}/s.db"], tmp_path
    ).sweep
    with pytest.raises(UserError, match="sweep.storage: cannot write the study .*readonly database") as e:
        optimize(scfg, tmp_path / "out", lambda cfg, wrap: pytest.fail("a trial ran"))
    assert "\n" not in str(e.value)


# -- seeds in the base-vs-best comparison (fake runs) ------------------------------------------------------------
def _seeded_sweep(tmp_path, seeds: str):
    """quickstart_tiny with lr0 the only parameter (trials 0.05 then 0.001, enqueued), no pruning, ``seeds``.
    Composed (and its runs composed) inside the caller's ``initialize_config_dir``."""
    from hydra import compose

    scfg = compose(
        "sweep",
        overrides=[
            "sweep=quickstart_tiny",
            f"sweep.storage=sqlite:///{tmp_path}/s.db",
            f"sweep.seeds={seeds}",
            "sweep.n_trials=2",
            "sweep.pruner.name=none",
        ],
    ).sweep
    with open_dict(scfg):
        scfg.search_space = {"train.lr0": {"type": "categorical", "choices": [0.05, 0.001]}}
        scfg.enqueue = [{"train.lr0": 0.05}, {"train.lr0": 0.001}]
    return scfg


def _fake_runs(tmp_path):
    """A run_fn that writes the run's metrics.json: val/f1 = 0.5 + lr0 + seed / 100 (with a page interval)."""
    import json

    calls = []

    def run_fn(train_cfg, wrap):
        run_dir = Path(train_cfg.paths.run_dir)
        lr, seed = float(train_cfg.train.lr0), int(train_cfg.seed)
        calls.append((run_dir.relative_to(tmp_path).as_posix(), seed, lr))
        f1 = 0.5 + lr + seed / 100
        metrics = {"val/f1": f1, "val/f1_ci_low": f1 - 0.1, "val/f1_ci_high": f1 + 0.1, "val/mAP50": 0.4}
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps({"metrics": metrics}))
        return metrics

    return run_fn, calls


def test_base_and_best_trial_per_seed_with_their_spread(tmp_path):
    """sweep.seeds=[0,1,2]: trials train at seed 0; mode=base trains the base at 0, 1, 2 and the best trial's
    parameters at 1 and 2, once; the summary reports mean ± std [min, max] over the seeds and the difference of
    the means."""
    import json

    from evaluation.sweep_report import summarize
    from training.sweep.__main__ import train_base

    assert compose_cfg("sweep", []).sweep.seeds == [0]  # the default: one seed, as before
    out = tmp_path / "out"
    run_fn, calls = _fake_runs(tmp_path)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        scfg = _seeded_sweep(tmp_path, "[0,1,2]")
        optimize(scfg, out, run_fn)
        assert [(c[1], c[2]) for c in calls] == [(0, 0.05), (0, 0.001)]  # every trial at the first seed
        calls.clear()
        train_base(scfg, out, run_fn)
        base_lr = calls[0][2]
        assert calls == [
            ("out/base/seed_0", 0, base_lr),
            ("out/base/seed_1", 1, base_lr),
            ("out/base/seed_2", 2, base_lr),
            ("out/best/trial_0000/seed_1", 1, 0.05),  # trial 0 is the best; it trained at seed 0 itself
            ("out/best/trial_0000/seed_2", 2, 0.05),
        ]
        calls.clear()
        train_base(scfg, out, run_fn)
        assert calls == []  # done runs are not redone
        summarize(scfg, out)
    doc = json.loads((out / "summary.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and sorted(doc["base_seeds"]) == sorted(doc["best_seeds"]) == [
        "0",
        "1",
        "2",
    ]
    assert doc["base"]["val/f1"] == pytest.approx(0.51 + base_lr) and doc["best"]["val/f1"] == pytest.approx(
        0.56
    )
    assert "val/f1_ci_low" not in doc["best"]  # one seed's page interval does not average
    md = (out / "summary.md").read_text()
    assert "0.5600 ± 0.0100 [0.5500, 0.5700]" in md
    assert f"| {100 * (0.05 - base_lr):+.2f} | 3 / 3 |" in md and "seeds (base / best)" in md
    assert "mean ± standard deviation" in md


def test_one_seed_base_vs_best_keeps_the_interval_and_waits_for_a_study(tmp_path):
    """sweep.seeds=[0]: one base run, no re-trained best; each value with its bootstrap interval. mode=base
    before any trial with several seeds trains the base only."""
    import json

    from evaluation.sweep_report import summarize
    from training.sweep.__main__ import train_base

    run_fn, calls = _fake_runs(tmp_path)
    (tmp_path / "early").mkdir()
    out = tmp_path / "out"
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        early = _seeded_sweep(tmp_path / "early", "[3,4]")
        train_base(early, tmp_path / "early" / "out", run_fn)
        assert [c[:2] for c in calls] == [("early/out/base/seed_3", 3), ("early/out/base/seed_4", 4)]

        calls.clear()
        scfg = _seeded_sweep(tmp_path, "[0]")
        optimize(scfg, out, run_fn)
        train_base(scfg, out, run_fn)
        assert [c[:2] for c in calls[2:]] == [("out/base/seed_0", 0)]
        summarize(scfg, out)
    md = (out / "summary.md").read_text()
    assert "0.5500 [0.4500, 0.6500]" in md and "seeds (base / best)" not in md
    assert json.loads((out / "summary.json").read_text())["best"]["val/f1_ci_low"] == pytest.approx(0.45)


def test_seeds_must_be_distinct(tmp_path):
    from training.cli import ConfigError
    from training.sweep.__main__ import train_base

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        scfg = _seeded_sweep(tmp_path, "[1,1]")
    with pytest.raises(ConfigError, match="sweep.seeds"):
        train_base(scfg, tmp_path / "out", lambda cfg, wrap: pytest.fail("trained"))
