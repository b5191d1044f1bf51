"""User-facing errors: one clear line, a non-zero exit, never a bare traceback."""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import errno
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_CHECKOUT_CONF = Path(__file__).resolve().parents[1] / "conf"


def _conf_dir() -> Path:
    """The config folder: the checkout's ``conf/`` (also an editable install), else the copy an installed wheel
    carries as the package ``sigdet.conf`` (pyproject maps ``conf/`` there)."""
    if (_CHECKOUT_CONF / "train.yaml").is_file():
        return _CHECKOUT_CONF
    import importlib.util

    # found, not imported: importing sigdet (the API) would import this module again
    spec = importlib.util.find_spec("sigdet")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "sigdet's configs not found: neither a checkout's conf/ nor an installed sigdet.conf"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "conf"


CONF = _conf_dir()
#: what ``@hydra.main`` is given: the folder in a checkout, Hydra's ``pkg://`` search path in an installed wheel
CONFIG_PATH = str(CONF) if CONF == _CHECKOUT_CONF else "pkg://sigdet.conf"


class UserError(Exception):
    """A mistake in the user's input (config, data, paths). Printed as one line, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """Bad dataset content. The message names the file and the entry."""


class ConfigError(UserError):
    """Bad configuration value."""


class OfflineError(UserError):
    """A hub / network resource was asked for and cannot be reached."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first non-blank line of an exception's message (libraries' messages run over several lines), cut to
    ``limit`` characters; the exception's class name when it has no message."""
    lines = str(e).strip().splitlines()
    return lines[0].strip()[:limit] if lines else e.__class__.__name__


# set while the Python API runs a command in-process (sigdet.run): mistakes are raised, not printed and exited on
IN_PROCESS: contextvars.ContextVar[bool] = contextvars.ContextVar("sigdet_in_process", default=False)


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a UserError raised by a CLI entry point into one stderr line and exit code 2 (raised as it is when the
    command runs in-process under the Python API)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if IN_PROCESS.get():
                raise
            # one line even when a path or a value holds a newline
            print("error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
            sys.exit(e.exit_code)

    return wrapper


def _key_error(e: BaseException | None):
    """The innermost OmegaConf key error in the cause chain (the unknown key and the node it was looked up in)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    found = None
    while e is not None:
        if isinstance(e, ConfigKeyError | ConfigAttributeError) and getattr(e, "key", None) is not None:
            found = e
        e = e.__cause__ or e.__context__
    return found


# lines of Hydra's / OmegaConf's reports that say nothing to a user
_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable", "To append to your")


def config_error_line(e: BaseException) -> str:
    """Hydra's / OmegaConf's report of a config mistake as one line, with "did you mean" for an unknown key or
    group option (Hydra's own text otherwise: what it could not do and where)."""
    text = str(e)
    cause = str(e.__cause__ or "").strip()
    if cause and cause.splitlines()[0] not in text:
        text += "\n" + cause
    # an unknown group option: Hydra lists the options, then its search path
    text = text.split("Config search path:")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    missing = re.search(r"Could not find '([^']+)'", text)
    at = next((i for i, ln in enumerate(lines) if ln.startswith("Available options")), None)
    if missing and at is not None:
        options = [o for o in lines[at + 1 :] if not o.startswith("schema_")]  # schemas are not choices
        near = difflib.get_close_matches(missing.group(1).rsplit("/", 1)[-1], options, n=3)
        hint = f"did you mean {near}? " if near else ""
        return "; ".join(lines[:at]) + f"; {hint}{lines[at].rstrip(':')}: {', '.join(options)}"
    msg = "; ".join(dict.fromkeys(lines)) or e.__class__.__name__
    ke = _key_error(e)
    if ke is None:
        return msg
    node_type = getattr(ke, "object_type", None)
    if node_type is not None and dataclasses.is_dataclass(node_type):
        valid = [f.name for f in dataclasses.fields(node_type)]
    else:
        parent = getattr(ke, "parent_node", None)
        valid = [str(k) for k in parent] if hasattr(parent, "keys") else []
    near = difflib.get_close_matches(str(ke.key), valid, n=3)
    if near:
        return f"{msg}; did you mean {near}?"
    return (
        f"{msg}; {getattr(ke, 'full_key', None) or ke.key}: valid keys are {sorted(valid)}" if valid else msg
    )


# where a write failed for a reason of the place, not of the program: a file where a folder is needed, no
# permission, a read-only or full disk
_PLACE_ERRNOS = {
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
}


# the run folder of the command in this process (set once Hydra made it)
_WRITING_IN: list[str | None] = [None]


def unwritable_line(e: OSError, where: str | None = None) -> str | None:
    """A write that failed because of the place (a run dir under a file, a read-only folder, a full disk) as one
    line naming the path and what is wrong with it; None for other errors (those keep their traceback).
    ``where``: the folder the command was writing in, named when a full or read-only disk fails a ``write()``
    that names no file."""
    if e.errno not in _PLACE_ERRNOS:
        return None
    if not e.filename and where and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        e = OSError(e.errno, e.strerror or os.strerror(e.errno), f"{where} (a file in it)")
    if not e.filename:
        return None
    hint = {
        errno.ENOSPC: "; free some space (or choose another hydra.run.dir / SIGDET_CACHE_DIR)",
        errno.EDQUOT: "; free some space (or choose another hydra.run.dir / SIGDET_CACHE_DIR)",
        errno.EEXIST: "; a file stands where a folder is needed: choose another hydra.run.dir",
        errno.ENOTDIR: "; a file stands where a folder is needed: choose another hydra.run.dir",
    }.get(e.errno, "")
    return f"{e.filename}: cannot use this path ({e.strerror}){hint}"


def extra_schema_keys(cfg, prefix: str = "") -> list[str]:
    """Keys that a schema-backed node (a group with a dataclass schema, training/config.py) does not define: Hydra
    lets ``+group.key=value`` add one to it, where a misspelt key (``+evaluation.n_bootstap=5``) would then be read
    by nothing. Each as ``dotted.key (did you mean ...)``."""
    from omegaconf import DictConfig, OmegaConf

    out = []
    if not isinstance(cfg, DictConfig):
        return out
    kind = OmegaConf.get_type(cfg)
    fields = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else None
    for key in cfg:
        where = f"{prefix}{key}"
        if fields is not None and key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=2)
            out.append(where + (f" (did you mean {near}?)" if near else f" (valid keys: {fields})"))
            continue
        node = cfg._get_node(key)  # unresolved: a node holding an interpolation is not a container
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            out += extra_schema_keys(node, where + ".")
    return out


def _check_schema_keys(cfg) -> None:
    extra = extra_schema_keys(cfg)
    if extra:
        raise ConfigError(f"{extra[0]}: not a key of its config group's schema, so nothing would read it")


def run_cli(main: Callable[[], object]) -> None:
    """Run a ``@hydra.main`` entry point so that a config mistake (an unknown or misspelt key, a wrong type, an
    unknown group option, a mandatory ``???`` value left unset) is one line with suggestions and exit code 2,
    not Hydra's multi-line report with exit code 1. Errors in the task itself keep their full traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises instead of printing and exiting 1
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        if IN_PROCESS.get():
            raise ConfigError(config_error_line(e).replace("\r", " ").replace("\n", " ")) from None
        print("error: " + config_error_line(e).replace("\r", " ").replace("\n", " "), file=sys.stderr)
        sys.exit(2)


def _vet_config_files() -> None:
    """training/config_files.py, before Hydra composes; its refusal as a :class:`ConfigError`."""
    from training.config_files import RefusedConfig, vet_config_files

    try:
        vet_config_files(CONF)
    except RefusedConfig as e:
        raise ConfigError(str(e)) from None


def cli(config_name: str) -> Callable[[Callable[..., T]], Callable[[], None]]:
    """Make ``main(cfg)`` an entry point on ``conf/<config_name>.yaml``: Hydra composes the config, a
    :class:`UserError` is one line with its exit code, and :func:`run_cli` turns config mistakes into one line with
    exit code 2. ``if __name__ == "__main__": main()`` runs it."""
    import hydra

    def wrap(task: Callable[..., T]) -> Callable[[], None]:
        @functools.wraps(task)
        def checked(cfg):
            _check_schema_keys(cfg)
            from hydra.core.hydra_config import HydraConfig

            # the run folder, named when a full disk fails a write that names no file
            _WRITING_IN[0] = HydraConfig.get().runtime.output_dir
            try:
                return task(cfg)
            except (
                OSError
            ) as e:  # a place that cannot take a write: one line, exit 2, from inside the task too
                line = unwritable_line(
                    e, _WRITING_IN[0]
                )  # (before Hydra adds its "Error executing job" line)
                if line is None:
                    raise
                raise UserError(line) from None

        composed = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(
            exit_on_user_error(checked)
        )

        @functools.wraps(task)
        def entry() -> None:
            exit_on_user_error(_vet_config_files)()  # a config file from others never runs code
            try:
                run_cli(composed)
            except OSError as e:
                line = unwritable_line(e, _WRITING_IN[0])
                if line is None or IN_PROCESS.get():
                    raise
                print("error: " + line, file=sys.stderr)
                sys.exit(2)

        entry.config_name = config_name  # what the Python API composes for this command
        return entry

    return wrap


def _fresh(folder: Path) -> Path:
    """Hydra's timestamped run dir, or ``<it>_2``, ``_3``... when a call in the same second already made it (the
    Python API can start two runs within one second)."""
    k, out = 2, folder
    while out.exists():
        out, k = folder.with_name(f"{folder.name}_{k}"), k + 1
    return out


def compose(config_name: str, overrides=(), run_dir: str | Path | None = None):
    """The config an entry point on ``conf/<config_name>.yaml`` would run with ``overrides`` (a list of Hydra
    override strings), for the Python API: the same vetting of config files and the same one-line errors
    (raised as :class:`ConfigError`, not an exit). ``paths.run_dir`` is set to ``run_dir``, else to the run dir
    Hydra would have made (``hydra.run.dir``), so that the task writes where the command would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    _vet_config_files()
    overrides = [str(o) for o in ([overrides] if isinstance(overrides, str) else overrides)]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()  # a composition of an earlier call (or of a notebook's own)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            if "paths" in cfg and (run_dir is not None or not cfg.paths.get("run_dir")):
                cfg.paths.run_dir = str(run_dir or _fresh(Path(OmegaConf.select(cfg, "hydra.run.dir"))))
            del cfg["hydra"]
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(config_error_line(e).replace("\r", " ").replace("\n", " ")) from None
    _check_schema_keys(cfg)
    return cfg


def check_device(device, key: str = "device") -> None:
    """``device=`` (``cpu``, ``cuda``, ``cuda:1``, ``0``, ultralytics' ``0,1``; None / ``auto``: the default) as
    one line when it names no device of this machine: torch's own error is a deep traceback, and comes only when
    the model first runs."""
    if device is None or str(device).strip().lower() in ("", "auto", "null"):
        return
    import torch

    text = str(device).strip()
    for part in text.split(",") if "," in text else [text]:
        part = part.strip()
        try:
            dev = torch.device(f"cuda:{part}" if part.isdigit() else part)
        except (RuntimeError, ValueError):
            raise UserError(f"{key}={text}: not a device; cpu, cuda, cuda:1 or 0") from None
        if dev.type == "cpu":
            continue
        module = getattr(torch, dev.type, None)
        if module is None or not hasattr(module, "is_available") or not module.is_available():
            what = "CUDA" if dev.type == "cuda" else dev.type
            raise UserError(f"{key}={text}: no {what} device on this machine ({key}=cpu runs here)")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{key}={text}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def optional_import(module: str, extra: str, purpose: str):
    """``import module`` for an optional part (a pyproject extra); a :class:`UserError` saying which extra to
    install when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{purpose} needs the optional package {module!r}: pip install 'sigdet[{extra}]'"
        ) from None


def require(cfg, *keys: str, usage: str) -> None:
    """A :class:`UserError` naming the first of ``keys`` the user left unset (``???``), with ``usage``."""
    from omegaconf import OmegaConf

    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise UserError(f"{key}= is required ({usage})")
