"""The ``sigdet`` command: ``sigdet <command> [key=value ...]``, each command the same Hydra app as its
``python -m`` form (same config, same overrides, same run folders)."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys

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
    sys.argv = [f"sigdet {name}", *args[1:]]
    entry.main()


if __name__ == "__main__":
    main()
