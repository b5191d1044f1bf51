import dataclasses
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from tests.conftest import CONF, compose_cfg
from training.backends import BACKENDS, get_backend
from training.backends.ultralytics_training import check_train_args
from training.cli import ConfigError

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
UPSTREAM = (
    [f"yolov8{s}" for s in "nsmlx"]
    + [f"yolo11{s}" for s in "nsmlx"]
    + [f"yolov10{s}" for s in "nsbmlx"]
    + ["rtdetr-l"]
    + [f"yolo26{s}" for s in "nsmlx"]
)
TRANSFORMERS = (
    ["detr-resnet-50", "conditional-detr-resnet-50", "yolos-tiny", "yolos-base"]
    + [f"rf-detr-{s}" for s in ("nano", "small", "medium", "base", "large")]
    + [f"d-fine-{s}" for s in ("nano", "small", "medium", "large", "xlarge")]
    + ["deimv2-n"]
    + [f"rt-detr-v2-{b}" for b in ("r18", "r34", "r50", "r101")]
)
# every model file, the debug ones included, as its group option (model=debug/detr)
MODEL_FILES = sorted(
    str(p.relative_to(CONF / "model").with_suffix("")) for p in (CONF / "model").rglob("*.yaml")
)
# what each run composes: every experiment but upstream on its own, upstream with each model that names its weights
RUNS = [(e, None) for e in EXPERIMENTS if e != "upstream"]
RUNS += [("upstream", m) for m in UPSTREAM + TRANSFORMERS]


def test_every_upstream_model_has_a_config_with_its_upstream_weights():
    assert set(UPSTREAM) | set(TRANSFORMERS) <= set(MODELS)
    assert {"upstream", "quickstart"} <= set(EXPERIMENTS)
    assert not set(EXPERIMENTS) & set(MODELS)  # one experiment takes any model, none is a model's copy
    for m in MODELS:
        cfg = OmegaConf.load(CONF / "model" / f"{m}.yaml")
        assert ("upstream_weights" in cfg) == (cfg.backend != "classifier"), m
        assert (m in UPSTREAM + TRANSFORMERS) == (cfg.backend != "classifier"), m


@pytest.mark.parametrize("name,model", RUNS, ids=[f"{e}-{m}" if m else e for e, m in RUNS])
def test_experiment_composes_and_resolves(name, model, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", *([f"model={model}"] if model else [])], tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.model.backend in BACKENDS
    if cfg.model.backend == "classifier":
        assert OmegaConf.get_type(cfg.train).__name__ == "ClassifierTrainer"
        assert cfg.crops.synthetic.pages.train > 0
    elif cfg.model.backend == "ultralytics":
        # ultralytics ignores lr0 under optimizer=auto: our defaults must name one
        assert cfg.train.optimizer != "auto"
        check_train_args(OmegaConf.to_container(cfg.train))
    else:
        # the model file selects the transformers trainer
        assert OmegaConf.get_type(cfg.train).__name__ == "TransformersTrainer"
        assert "optimizer" not in cfg.train and cfg.model.weights == cfg.model.hub_id
    if model is None:
        assert cfg.task_name == name
    else:
        assert cfg.task_name == cfg.model.name == model and cfg.data.path == "tech4humans/signature-detection"
        assert cfg.model.weights == (cfg.model.hub_id if model in TRANSFORMERS else f"{model}.pt")


@pytest.mark.parametrize("model", TRANSFORMERS)
def test_a_transformers_model_selects_its_trainer(model, tmp_path):
    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    assert OmegaConf.get_type(cfg.train).__name__ == "TransformersTrainer" and cfg.model.weights is None
    # trainer@train on the command line still wins over the model file's choice
    cfg = compose_cfg("train", [f"model={model}", "trainer@train=ultralytics"], tmp_path)
    assert "optimizer" in cfg.train


@pytest.mark.parametrize("model", MODELS)
def test_model_config_builds_a_real_architecture(model):
    cfg = OmegaConf.load(CONF / "model" / f"{model}.yaml")
    if cfg.backend == "ultralytics":
        from ultralytics.nn.tasks import yaml_model_load

        d = yaml_model_load(cfg.arch)
        assert "backbone" in d and "head" in d
    elif cfg.backend == "classifier":
        from training.classifier.model import RegionClassifier

        m = RegionClassifier(list(cfg.classes), cfg.imgsz, cfg.normalize)
        assert m.net.fc.out_features == len(cfg.classes) == 3
    else:
        import transformers

        from training.backends.transformers import FAMILIES, backbone_config

        cfg_cls = getattr(transformers, FAMILIES[cfg.family].config)
        kwargs = OmegaConf.to_container(cfg.config)
        if "backbone" in cfg:
            kwargs["backbone_config"] = backbone_config(OmegaConf.to_container(cfg.backbone))
        c = cfg_cls(**kwargs, num_labels=1)  # the config alone: building 4 full models here would be slow
        assert c.num_labels == 1


@pytest.mark.parametrize("data", DATA)
def test_data_configs_compose(data, tmp_path):
    cfg = compose_cfg("train", [f"data={data}"], tmp_path)
    from training.data.loader import FORMATS

    assert cfg.data.format in FORMATS
    assert set(cfg.data.splits) == {"train", "val", "test"}


def test_overrides_reach_ultralytics_args(tmp_path):
    cfg = compose_cfg(
        "train", ["experiment=quickstart", "train.lr0=0.0123", "+train.mixup=0.1", "model=yolo11s"], tmp_path
    )
    args = check_train_args(OmegaConf.to_container(cfg.train, resolve=True))
    assert args["lr0"] == 0.0123 and args["mixup"] == 0.1
    assert cfg.model.arch == "yolo11s.yaml"


def test_unknown_train_arg_fails_with_suggestion():
    with pytest.raises(ConfigError, match="lr0"):
        check_train_args({"lr": 0.1, "lro": 1})
    with pytest.raises(ConfigError, match="set by the framework"):
        check_train_args({"data": "x.yaml"})


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ConfigError, match="ultralytics"):
        get_backend("nope")


def test_a_family_newer_than_the_installed_transformers_is_one_line(monkeypatch):
    """With a transformers that predates a family's classes (a family newer than pyproject's lower bound, or an
    environment that ignored it), building it says so in one line, not an AttributeError."""
    from training.backends import transformers as hf

    older = {
        "deimv2": dataclasses.replace(hf.FAMILIES["deimv2"], config="Deimv3Config"),
        "rf_detr": dataclasses.replace(hf.FAMILIES["rf_detr"], processor="RfDetrV9ImageProcessor"),
    }
    monkeypatch.setattr(hf, "FAMILIES", {**hf.FAMILIES, **older})
    with pytest.raises(
        ConfigError, match=r"^model.family=deimv2: transformers .* has no Deimv3Config; .*newer"
    ):
        hf.image_processor("deimv2", 64)
    with pytest.raises(ConfigError, match="has no RfDetrV9ImageProcessor"):
        hf.image_processor("rf_detr", 64)


def test_evaluate_root_composes(tmp_path):
    cfg = compose_cfg("evaluate", ["checkpoint=x.pt", "evaluation.splits=[test]"], tmp_path)
    assert cfg.backend == "ultralytics" and list(cfg.evaluation.splits) == ["test"]


def test_no_runtime_reference_to_shared():
    root = Path(__file__).resolve().parents[1]
    for folder in ("training", "evaluation", "export", "conf"):
        for f in (root / folder).rglob("*"):
            if f.suffix in {".py", ".yaml", ".toml"}:
                assert "../shared" not in f.read_text(encoding="utf-8"), f


@pytest.mark.parametrize(
    "model", [m for m in MODELS if OmegaConf.load(CONF / "model" / f"{m}.yaml").backend == "ultralytics"]
)
def test_ultralytics_model_builds_from_its_yaml(model, tmp_path):
    from training.backends import build_detector

    cfg = compose_cfg("train", [f"model={model}"], tmp_path)
    net = build_detector(cfg.model, tmp_path)._build()
    assert sum(p.numel() for p in net.model.parameters()) > 1e6


def test_bad_train_value_types_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="epochs"):
        check_train_args({"epochs": "abc"})
    from hydra.errors import ConfigCompositionException

    from tests.conftest import HF_TINY
    from training.cli import config_error_line

    # the transformers trainer's schema refuses it while Hydra composes; the CLI prints one line naming the key
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("train", ["model=debug/detr", *HF_TINY, "train.batch=lots"], tmp_path)
    line = config_error_line(e.value)
    assert "train.batch=lots" in line and "\n" not in line


@pytest.mark.parametrize("root", ["export", "export_benchmark", "generate", "classify", "predict", "publish"])
def test_other_roots_compose_and_resolve(root):
    overrides = {
        "export": ["checkpoint=x.pt"],
        "export_benchmark": ["export_dir=x"],
        "generate": ["out=x"],
        "classify": ["checkpoint=x.pt", "pages=x", "out=y"],
        "predict": ["checkpoint=x.pt", "source=x"],
        "publish": ["run_dir=x"],
    }[root]
    cfg = compose_cfg(root, overrides)
    OmegaConf.to_container(cfg, resolve=True)


def _missing(node, prefix: str = "") -> list[str]:
    out = []
    for k in node:
        if OmegaConf.is_missing(node, k):
            out.append(f"{prefix}{k}")
        elif isinstance(node._get_node(k), DictConfig):  # no interpolation resolved
            out += _missing(node._get_node(k), f"{prefix}{k}.")
    return out


def test_schema_groups_set_every_key_and_refuse_unknown_ones(tmp_path):
    """The structured configs (training/config.py): each YAML of a schema-backed group sets every field (no
    value lives in Python), and a key the schema lacks is refused, from an experiment file as from an override."""
    from omegaconf.errors import ConfigKeyError

    from training.config import SCHEMAS

    for group, name in SCHEMAS:
        files = [p.stem for p in (CONF / group).glob("*.yaml")]
        assert any(name in (CONF / group / f"{f}.yaml").read_text() for f in files), (group, name)
    for option, schema in (("default", "DetectionEvaluation"), ("classifier", "ClassifierEvaluation")):
        cfg = compose_cfg("train", [f"evaluation={option}"], tmp_path)
        assert OmegaConf.get_type(cfg.evaluation).__name__ == schema
        assert not [k for k in cfg.evaluation if OmegaConf.is_missing(cfg.evaluation, k)], option
    cases = [
        ("train", [f"{g}={p.relative_to(CONF / g).with_suffix('')}"], g)
        for g in ("data", "model", "logger", "recipe")
        for p in sorted((CONF / g).rglob("*.yaml"))
    ]
    cases += [
        ("train", ["trainer@train=transformers", "model=debug/detr"], "train"),
        ("train", ["experiment=classifier_two_stage"], "train"),
        ("train", ["experiment=classifier_two_stage"], "crops"),
        ("train", [], "paths"),
        *[("sweep", [f"sweep={p.stem}"], "sweep") for p in sorted((CONF / "sweep").glob("*.yaml"))],
    ]
    for root, overrides, key in cases:
        node = compose_cfg(root, overrides)[key]
        assert dataclasses.is_dataclass(OmegaConf.get_type(node)), (overrides, key)
        # every field set by the YAML, except the ones it marks ??? on purpose (the user must give them)
        text = "".join(p.read_text() for p in CONF.rglob("*.yaml"))
        unset = [k for k in _missing(node) if f"{k.rsplit('.', 1)[-1]}: ???" not in text]
        assert not unset, (overrides, key, unset)
    exp = tmp_path / "sp" / "experiment"
    exp.mkdir(parents=True)
    (exp / "typo.yaml").write_text("# @package _global_\nevaluation:\n  n_bootstap: 5\n")
    from hydra.errors import ConfigCompositionException

    with pytest.raises((ConfigKeyError, ConfigCompositionException), match="n_bootstap"):
        compose_cfg("train", [f"hydra.searchpath=[file://{tmp_path / 'sp'}]", "experiment=typo"], tmp_path)
    with pytest.raises(ConfigCompositionException, match="n_bootstap"):
        compose_cfg("train", ["evaluation.n_bootstap=5"], tmp_path)


def test_run_files_guard_is_one_of_our_functions():
    """``hydra.callbacks.run_files.guard`` is called through Hydra's get_method, which runs any dotted path without
    the checks Hydra applies to ``_target_``: only a function of our packages is accepted."""
    from training.cli import ConfigError
    from training.runfiles import RunFiles

    assert RunFiles(guard="training.train.check_run_dir").guard == "training.train.check_run_dir"
    for bad in ("os.system", "builtins.exec", "subprocess.call"):
        with pytest.raises(ConfigError, match="run_files.guard"):
            RunFiles(guard=bad)


def test_a_key_added_with_plus_to_a_schema_group_is_refused():
    """``+evaluation.n_bootstap=5`` (a misspelt key added with ``+``) would be read by nothing: one line with the
    key and the near one, from the commands and the API alike; a group without a schema still takes new keys."""
    from training.cli import ConfigError, compose

    with pytest.raises(ConfigError, match=r"evaluation.n_bootstap \(did you mean \['n_bootstrap'\]\?\)"):
        compose("train", ["+evaluation.n_bootstap=5"], run_dir="x")
    compose("train", ["+train.mixup=0.1"], run_dir="x")  # ultralytics' own arguments: checked by ultralytics


# SPDX identifiers the model files use (https://spdx.org/licenses/); "none": random init, no weights inherited
SPDX = {"AGPL-3.0", "Apache-2.0", "BSD-3-Clause"}


@pytest.mark.parametrize("model", MODEL_FILES)
def test_every_model_file_states_its_licence_and_size(model):
    """Issue 38: each model config carries the licence of its code and weights and its published parameter count,
    which model selection prints beside accuracy (and ``licence=apache`` filters on); a debug model inherits no
    weights and has no published size."""
    raw = OmegaConf.load(CONF / "model" / f"{model}.yaml")
    assert set(raw.get("licence") or {}) == {"code", "weights"}, model
    assert "params_m" in raw, model
    cfg = compose_cfg("train", [f"model={model}"]).model  # the schema takes both
    assert cfg.licence.code in SPDX, (model, cfg.licence.code)
    if model.startswith("debug/"):
        assert cfg.licence.weights == "none" and cfg.params_m is None, model
    else:
        assert cfg.licence.weights in SPDX and 0.1 < cfg.params_m < 1000, (model, cfg.licence, cfg.params_m)
    if cfg.backend == "ultralytics":
        assert cfg.licence.code == cfg.licence.weights == "AGPL-3.0", model
    if cfg.backend == "transformers":
        assert cfg.licence.code == "Apache-2.0", model


def test_a_model_file_without_its_licence_is_refused(tmp_path):
    """The schema's licence and params_m are ``???``: a model file that leaves them out fails where it is read."""
    from omegaconf.errors import MissingMandatoryValue

    group = tmp_path / "sp" / "model"
    group.mkdir(parents=True)
    text = (CONF / "model" / "yolov8s.yaml").read_text()
    kept = [line for line in text.splitlines() if not line.startswith(("licence:", "params_m:"))]
    (group / "nolicence.yaml").write_text("\n".join(kept) + "\n")
    cfg = compose_cfg("train", [f"hydra.searchpath=[file://{tmp_path / 'sp'}]", "model=nolicence"])
    for key in ("licence", "params_m"):
        with pytest.raises(MissingMandatoryValue):
            cfg.model[key]  # noqa: B018


def test_frontier_presets_name_the_frontier_models():
    """preset=frontier lists YOLO26 and the four transformers families in model files that exist;
    preset=frontier_cpu_tiny is the same families as debug models with cpu_tiny's settings."""
    full = compose_cfg("model_selection", ["preset=frontier"])
    assert set(full.models) <= set(MODELS) and len(full.models) == len(set(full.models))
    families = {OmegaConf.load(CONF / "model" / f"{m}.yaml").get("family", m[:6]) for m in full.models}
    assert families == {"yolo26", "rf_detr", "d_fine", "deimv2", "rt_detr_v2"}
    tiny = compose_cfg("model_selection", ["preset=frontier_cpu_tiny"])
    cpu = compose_cfg("model_selection", ["preset=cpu_tiny"])
    assert set(tiny.models) <= set(MODEL_FILES)
    assert {OmegaConf.load(CONF / "model" / f"{m}.yaml").get("family") for m in tiny.models if "/" in m} == (
        families - {"yolo26"}
    )
    for key in ("train_overrides", "backend_overrides", "latency", "evaluation"):
        assert OmegaConf.to_container(tiny[key]) == OmegaConf.to_container(cpu[key]), key
