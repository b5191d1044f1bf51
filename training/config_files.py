"""Config files from others never run code.

Hydra instantiates ``_target_`` in ``hydra.callbacks`` / ``hydra.launcher`` / ``hydra.sweeper``, and hands
``hydra.job_logging`` to ``logging.config.dictConfig``, which imports any ``class`` and calls any ``()`` factory it
names: an experiment file someone sends (dropped into ``conf/experiment/`` or reached through
``hydra.searchpath`` / ``--config-dir``) could run code before our entry point starts. Hydra has no switch for
this, so :func:`vet_config_files` reads every YAML file of the search path before Hydra composes, and refuses one
that names code: a ``_target_`` (other than our own Hydra callback), a ``()`` factory or a logging ``class``
(other than the standard library's stream / file / null handlers). What the user types on the command line is
theirs and is not vetted; installed packages (``pkg://`` search paths, Hydra's plugins) are code the user
installed.

Also refused: ``--experimental-rerun``, which unpickles the file it is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

# the one place our own configs name code: the run-files callback, as (file below conf/, target)
OWN_TARGETS = {(("hydra", "callbacks", "run_files.yaml"), "training.runfiles.RunFiles")}
CODE_KEYS = ("_target_", "()", "class")
# logging handler classes of the standard library that write where they are told and call nothing else
PLAIN_HANDLERS = {"logging.StreamHandler", "logging.FileHandler", "logging.NullHandler"}


class RefusedConfig(ValueError):
    """A config file that names code, or a command line that would unpickle a file (training/cli.py's ``cli``
    turns it into one line and exit code 2)."""


def _searchpath_dirs(values) -> list[Path]:
    """The ``file://`` folders of a ``hydra.searchpath`` value (``pkg://`` ones are installed packages)."""
    values = values if isinstance(values, list | tuple) else [values]
    return [Path(str(v)[len("file://") :]).expanduser() for v in values if str(v).startswith("file://")]


def _names_code(node, own_file: tuple | None, where: str = "") -> str | None:
    """The first key of ``node`` that names code, as ``key.path: value``; None when there is none.
    ``own_file``: the file's path parts below our conf/ (None for a file elsewhere)."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{where}.{k}" if where else str(k)
            own = k == "_target_" and isinstance(v, str) and (own_file, v) in OWN_TARGETS
            if k in CODE_KEYS and not own and not (k == "class" and v in PLAIN_HANDLERS):
                return f"{here}: {v!r}"
            found = _names_code(v, own_file, here)
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _names_code(v, own_file, f"{where}[{i}]")
            if found:
                return found
    return None


def vet_file(path: Path, conf: Path) -> list[Path]:
    """Refuse ``path`` when it names code; the ``file://`` search paths it adds (``hydra.searchpath``).
    ``conf``: our config folder (its files may name our own targets)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # Hydra reports an unreadable file itself, if the run uses it
    if "\\" not in text and not any(k in text for k in (*CODE_KEYS, "searchpath")):
        return []  # the common case, without parsing (a backslash could spell a key with an escape)
    try:  # OmegaConf's own YAML loader: the file is read here as Hydra will read it
        from omegaconf._utils import get_yaml_loader

        loader = get_yaml_loader()
    except ImportError:  # an OmegaConf that moved it
        loader = yaml.SafeLoader
    try:
        docs = list(yaml.load_all(text, Loader=loader))  # noqa: S506 (a safe loader)
    except yaml.YAMLError:
        return []  # Hydra cannot load it either: its error, if the run uses the file
    added = []
    for doc in docs:
        resolved = path.resolve()
        own_file = resolved.relative_to(conf).parts if resolved.is_relative_to(conf) else None
        found = _names_code(doc, own_file)
        if found:
            raise RefusedConfig(
                f"{path}: {found} names code that Hydra or logging would import and run; refused (a config file "
                "from others must not run code: move what you trust into your own module and config)"
            )
        hydra = doc.get("hydra") if isinstance(doc, dict) else None
        if isinstance(hydra, dict) and "searchpath" in hydra:
            added += _searchpath_dirs(hydra["searchpath"])
    return added


def vet_config_files(conf: Path, argv: list[str] | None = None) -> None:
    """Vet the YAML files of every config folder a CLI run composes from: ours (``conf``), ``--config-dir``, and
    the ``file://`` entries of ``hydra.searchpath`` (given on the command line or in a vetted file)."""
    # Hydra's own parser: the same reading of argv as Hydra's
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit:
        return  # Hydra reports the bad command line itself
    if args.experimental_rerun:
        raise RefusedConfig(
            f"--experimental-rerun {args.experimental_rerun}: not supported (Hydra unpickles that file, which can "
            "run code); rerun with the run's .hydra/overrides.yaml instead"
        )
    conf = Path(conf).resolve()
    dirs = [conf]
    for given in (args.config_dir, args.config_path):
        if given:  # a relative --config-path is relative to the file that calls hydra.main (training/cli.py)
            dirs += [Path(given).expanduser(), Path(__file__).parent / given]
    overrides = []
    if any("searchpath" in o for o in args.overrides or []):
        try:
            overrides = OverridesParser.create().parse_overrides(args.overrides)
        except Exception:  # noqa: BLE001 (Hydra reports a malformed override itself)
            overrides = []
    for o in overrides:
        if o.key_or_group.lstrip("+~") == "hydra.searchpath" and not o.is_sweep_override():
            dirs += _searchpath_dirs(o.value())
    seen: set[Path] = set()
    while dirs:
        d = dirs.pop().resolve()
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        for f in sorted(d.rglob("*.y*ml")):
            dirs += vet_file(f, conf)
