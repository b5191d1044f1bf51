"""The ``sigdet`` command: ``sigdet <command> [key=value ...]``, each command the same Hydra app as its
``python -m`` form (same config, same overrides, same run folders)."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import textwrap

# command -> (the module `python -m` runs: its main(), or its package's __main__.main(), is the Hydra app; what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("evaluation.predict", "find signatures in images, PDFs and folders; is each page signed?"),
    "train": ("training", "train a detector (or the region classifier), then evaluate it"),
    "evaluate": ("evaluation", "evaluate a checkpoint or an export on a dataset's splits"),
    "export": ("export", "export to ONNX / OpenVINO / TensorRT with parity checks"),
    "benchmark": ("export.benchmark", "latency of an export's runtimes against PyTorch and peers"),
    "sweep": ("training.sweep", "an Optuna sweep (several workers can share one study)"),
    "select": ("evaluation.model_selection", "train, evaluate and time several models: one table"),
    "report": ("evaluation.full_report", "the published tables reproduced from runs"),
    "classify": ("training.classifier.infer", "the two-stage region classifier on pages"),
    "generate": ("training.classifier.generate", "synthetic pages and crops for the classifier"),
    "convert": ("training.data.convert", "convert a dataset between COCO, YOLO and HF layouts"),
    "leakage": ("evaluation.leakage", "near-duplicate pages within and across a dataset's splits"),
    "publish": ("evaluation.publish", "push a run's weights and card to the Hugging Face hub"),
}


def entry_point(module: str):
    """The module holding a command's ``main()``: ``module`` itself, or its ``__main__`` when it is a package (as
    ``python -m`` runs it)."""
    spec = importlib.util.find_spec(module)
    return importlib.import_module(f"{module}.__main__" if spec.submodule_search_locations else module)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return (
        "usage: sigdet <command> [key=value ...]   (sigdet <command> --help: its config and overrides)\n\n"
        "commands:\n" + "\n".join(lines) + "\n\nEach is the same Hydra app as `python -m <module>`, e.g. "
        "`sigdet predict source=scans/` = `python -m evaluation.predict source=scans/`."
    )


def command_help(name: str, config_name: str) -> str:
    """``sigdet <command> --help``: what the command does, the config groups its config composes (each with its
    options: Hydra's own help lists every group of conf/, most of which the command has no slot for), and its root
    config file as written, comments included (they document every key)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from training.cli import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        choices = compose(config_name, return_hydra_config=True).hydra.runtime.choices
    GlobalHydra.instance().clear()
    groups = []
    for key, chosen in choices.items():
        group = key.split("@")[0]
        if group.startswith("hydra") or not (CONF / group).is_dir():
            continue
        options = sorted(
            f.relative_to(CONF / group).with_suffix("").as_posix()
            for f in (CONF / group).rglob("*.yaml")
            if not f.stem.startswith(("schema_", "_"))
        )
        # the key as an override writes it (trainer@train=transformers)
        head = f"  {key}={'null' if chosen is None else chosen}"
        groups.append(
            head
            + "\n"
            + textwrap.fill(", ".join(options), 116, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    text = (CONF / f"{config_name}.yaml").read_text(encoding="utf-8")
    return (
        f"sigdet {name}: {COMMANDS[name][1]}\n\n"
        f"usage: sigdet {name} [key=value ...]   (Hydra overrides; --cfg job prints the composed config, "
        "--hydra-help Hydra's flags)\n\n"
        + ("config groups (group=option):\n" + "\n".join(groups) + "\n\n" if groups else "")
        + f"conf/{config_name}.yaml:\n\n{text}"
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if args else 2)
    if args[0] in ("-V", "--version"):
        from sigdet import __version__

        print(f"sigdet {__version__}")
        return
    name = args[0]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"error: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    entry = entry_point(COMMANDS[name][0])
    config_name = getattr(entry.main, "config_name", None)
    if config_name and args[1:] and args[1] in ("-h", "--help"):
        print(command_help(name, config_name))
        return
    sys.argv = [f"sigdet {name}", *args[1:]]
    entry.main()


if __name__ == "__main__":
    main()
