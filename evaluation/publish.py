"""``python -m evaluation.publish run_dir=... [hub.repo_id=...] [hub.private=true] [wandb_artifact=true]``.

Publish a finished run of any family: write its model card (``README.md``, :mod:`evaluation.model_card`), and for a
transformers run folder its image processor config (``preprocessor_config.json``, which folders saved before the
Hugging Face interop lack); then, only when asked, upload the best weights with the card, ``metrics.json`` and
``config.yaml`` (re-masked; never ``.hydra/``) to the Hugging Face Hub, and log them as a W&B artifact of type
``model`` (offline without a key or under ``WANDB_MODE=offline``, as every W&B run here).
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evaluation.model_card import CARD, RunRecord, best_weights, read_run, splits_of, write_model_card
from training.cli import UserError, cli, first_line, optional_import, require
from training.tracking import build_tracker, redact

log = logging.getLogger(__name__)

USAGE = "a run folder of python -m training or python -m evaluation, holding metrics.json"


def publish_files(rec: RunRecord) -> dict[str, Path]:
    """What a publication holds, as ``{path in the repo: local file}``: the best weights (a transformers run
    folder's files at the repo root, so that ``pipeline("object-detection", model=<repo>)`` loads it; a ``.pt``
    under its own name), the card and ``metrics.json``. ``config.yaml`` is added re-masked by the caller; the
    resume state of a run folder and ``.hydra/`` never are.

    Raises:
        UserError: the run has no best weights.
    """
    weights = best_weights(rec)
    if weights is None:
        raise UserError(
            f"{rec.run_dir}: no best weights to publish (weights/best, weights/best.pt or an existing checkpoint "
            "named in metrics.json)"
        )
    _check_publishable(rec, weights)
    if weights.is_dir():
        from training.backends.transformers import STATE

        files = {f.name: f for f in sorted(weights.iterdir()) if _own_file(f) and f.name != STATE}
    else:
        files = {weights.name: weights}
    for name in (CARD, "metrics.json"):
        if _own_file(rec.run_dir / name):
            files[name] = rec.run_dir / name
    return files


def _own_file(path: Path) -> bool:
    """A regular file, not a link to one elsewhere (what publish uploads is public by default)."""
    return path.is_file() and not path.is_symlink()


def _check_publishable(rec: RunRecord, weights: Path) -> None:
    """The weights publish uploads are a model: a run folder may name any path in its metrics.json
    (``provenance.checkpoint``) or hold a link, and what is uploaded is public unless ``hub.private=true``."""
    if weights.is_symlink():
        raise UserError(
            f"{weights}: a symbolic link; publish uploads a run's own files, not what a link points to"
        )
    if weights.is_dir():
        model = any(_own_file(weights / n) for n in ("config.json", "sigdet_export.json"))
    else:
        model = weights.suffix == ".pt" and zipfile.is_zipfile(weights)
    if not model:
        raise UserError(
            f"{rec.run_dir}: its weights {weights} are not a model (a .pt checkpoint, a transformers run folder or "
            "an export folder); refused to publish them"
        )


def stage(rec: RunRecord, dest: Path) -> list[str]:
    """Copy :func:`publish_files` and the masked ``config.yaml`` into ``dest``; the staged repo paths."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in publish_files(rec).items():
        shutil.copy2(src, dest / name)
    if rec.config:
        masked = OmegaConf.to_yaml(OmegaConf.create(redact(rec.config)))
        (dest / "config.yaml").write_text(masked, encoding="utf-8")
    return sorted(p.name for p in dest.iterdir())


def push_to_hub(
    rec: RunRecord, repo_id: str, private: bool = False, message: str | None = None
) -> str | None:
    """Create ``repo_id`` (kept when it exists) and upload the staged files in one commit; returns its URL.

    When the hub cannot be reached (no route, offline mode, timeout), the files are kept in
    ``<run_dir>/hub_upload`` with the command that uploads them later, and None is returned.

    Raises:
        UserError: the hub refused the upload (one line naming the repo).
    """
    from huggingface_hub import HfApi

    message = message or f"sigdet: {rec.model_name} from {rec.run_dir.name}"
    with tempfile.TemporaryDirectory(prefix="sigdet-publish-") as tmp:
        files = stage(rec, Path(tmp))
        api = HfApi()
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", commit_message=message)
        except Exception as e:
            if _unreachable(e):  # no route, offline mode, timeout: keep what would go up, for a later upload
                kept = rec.run_dir / "hub_upload"
                shutil.copytree(tmp, kept, dirs_exist_ok=True)
                print(
                    f"warning: hub unreachable ({e.__class__.__name__}: {first_line(e, 120)}); staged in {kept}: "
                    f"upload it later with `hf upload {repo_id} {kept} . --repo-type model`",
                    file=sys.stderr,
                )
                return None
            if not isinstance(e, OSError | ValueError):  # HTTP status errors and bad repo ids are these
                raise
            raise UserError(
                f"hub.repo_id={repo_id}: upload failed ({first_line(e, 160)}); log in with `hf auth login` or set "
                "HF_TOKEN, and unset HF_HUB_OFFLINE"
            ) from None
    print(f"uploaded {', '.join(files)} to {url}")
    return str(url)


def _unreachable(e: BaseException) -> bool:
    """Whether a hub call failed for want of a connection (no route, refused, timeout, HF_HUB_OFFLINE), not because
    the hub answered no. huggingface_hub raises its HTTP client's transport errors (httpx's, which are not
    OSErrors) or its own OfflineModeIsEnabled (a ConnectionError); an answer with a status code is an HTTP error."""
    kinds = {c.__name__ for c in type(e).__mro__}
    return bool(kinds & {"TransportError", "ConnectionError", "OfflineModeIsEnabled", "TimeoutException"})


def artifact_name(rec: RunRecord, name: str | None = None) -> str:
    """A W&B artifact name (letters, digits, ``-``, ``_``, ``.``): ``name`` or ``<model>-<run folder>``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name or f"{rec.model_name}-{rec.run_dir.name}").strip("-")


def log_artifact(rec: RunRecord, logger_cfg, name: str | None = None) -> str:
    """Log the best weights, the card and ``metrics.json`` as a W&B artifact of type ``model`` in a W&B run
    opened with ``logger_cfg`` (conf/logger/wandb.yaml; files under ``<run dir>/wandb/``); returns its name.

    Raises:
        UserError: ``logger_cfg`` is not a W&B logger, or the run has no best weights.
    """
    if logger_cfg is None or str(logger_cfg.type) != "wandb":
        raise UserError("wandb_artifact=true needs logger=wandb (conf/logger/wandb.yaml)")
    files = publish_files(rec)
    logger_cfg = OmegaConf.merge(logger_cfg, {"name": logger_cfg.get("name") or f"publish-{rec.model_name}"})
    tracker = build_tracker(logger_cfg, rec.run_dir, rec.config)
    wandb = optional_import("wandb", "wandb", "wandb_artifact=true")

    art_name = artifact_name(rec, name)
    split = next((s for s in ("test", "val") if s in splits_of(rec)), None)
    metadata = {
        "backend": rec.backend,
        "model": rec.model_name,
        "run_dir": rec.run_dir.name,
        "provenance": rec.provenance,
        **({k: v for k, v in rec.metrics.items() if split and k.startswith(f"{split}/")}),
    }
    exit_code = 1
    try:
        art = wandb.Artifact(
            art_name, type="model", description=f"sigdet {rec.model_name}", metadata=metadata
        )
        for repo_path, src in files.items():
            art.add_file(str(src), name=repo_path)
        tracker.run.log_artifact(art, aliases=["best"])
        exit_code = 0
    finally:
        tracker.finish(exit_code)
    print(f"logged W&B artifact {art_name} ({tracker.mode}; {len(files)} files)")
    return art_name


def publish(cfg: DictConfig) -> dict:
    """The card (and a transformers folder's image processor config), then the hub upload and the W&B artifact
    when asked. Returns what was done: ``card``, ``processor``, ``hub`` (URL), ``artifact`` (name)."""
    require(cfg, "run_dir", usage=USAGE)
    run_dir = Path(str(cfg.run_dir))
    if not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir}: not a directory ({USAGE})")
    rec = read_run(run_dir)
    done: dict = {"card": None, "processor": None, "hub": None, "artifact": None}
    weights = best_weights(rec)
    if rec.backend == "transformers" and weights is not None and weights.is_dir():
        from training.backends.transformers import write_image_processor

        done["processor"] = write_image_processor(weights)
        print(f"wrote {done['processor']}")
    hub = cfg.get("hub") or {}
    done["card"] = write_model_card(run_dir, hub.get("repo_id"))
    print(f"wrote {done['card']}")
    if hub.get("repo_id"):
        done["hub"] = push_to_hub(
            rec, str(hub.get("repo_id")), bool(hub.get("private")), hub.get("commit_message")
        )
    if cfg.get("wandb_artifact"):
        done["artifact"] = log_artifact(rec, cfg.get("logger"), cfg.get("artifact_name"))
    return done


@cli("publish")
def main(cfg: DictConfig) -> None:
    publish(cfg)


if __name__ == "__main__":
    main()
