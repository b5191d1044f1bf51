"""Every command the README and the docs show still composes: its module exists and Hydra accepts its overrides
(unknown keys, unknown group options and wrong types fail here, as they would for a reader who pastes them)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sigdet.cli import COMMANDS, entry_point
from training.cli import compose

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)
# the Hydra apps: module as written after python -m -> the module whose main() it runs
MODULES = {m for m, _ in COMMANDS.values()}


def commands() -> list[tuple[str, str, list[str]]]:
    """``(page:line, module, overrides)`` of every ``sigdet ...`` / ``python -m ...`` line in a fenced block."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            start = text[: block.start(1)].count("\n") + 1
            joined = block.group(1).replace("\\\n", " ")
            for k, line in enumerate(joined.splitlines()):
                # placeholders such as <run> stand for the reader's own paths: any value composes
                line = re.sub(r"<[^>]*>", "X", line.split(" #", 1)[0]).strip()
                m = re.match(r"^(?:sigdet (\w+)|python -m ([\w.]+))(?:\s+(.*))?$", line)
                if not m or (m.group(1) and m.group(1) not in COMMANDS):
                    continue
                module = COMMANDS[m.group(1)][0] if m.group(1) else m.group(2).removesuffix(".__main__")
                if module not in MODULES:  # python -m venv, pip, pytest ...
                    continue
                args = shlex.split(m.group(3) or "")
                if any(a.startswith(("-", "hydra.searchpath=")) for a in args):
                    continue  # Hydra's own flags; configs written by an earlier command (a sweep's best experiment)
                out.append((f"{page.name}:{start + k}", module, args))
    return out


CMDS = commands()


def test_the_docs_show_commands():
    assert len(CMDS) > 40 and any(m == "evaluation.predict" for _, m, _ in CMDS)


@pytest.mark.parametrize("where,module,args", CMDS, ids=[c[0] for c in CMDS])
def test_documented_command_composes(where, module, args):
    config_name = entry_point(module).main.config_name
    cfg = compose(config_name, [a for a in args if "=" in a], run_dir="unused")
    if module == "export":  # the formats are checked when the export starts, not by Hydra
        from export.run import FORMATS

        assert set(cfg.formats) <= set(FORMATS), f"{where}: formats={list(cfg.formats)}"


def test_every_command_is_in_the_api_page_table():
    table = {}  # `sigdet ...` -> `python -m ...`, from rows such as | `classify`, `generate` | `a`, `b` |
    for line in (ROOT / "docs" / "api.md").read_text(encoding="utf-8").splitlines():
        cells = [re.findall(r"`([^`]+)`", c) for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and len(cells[0]) == len(cells[1]) > 0:
            table.update(zip(cells[0], cells[1], strict=True))
    assert {name: module for name, (module, _) in COMMANDS.items()}.items() <= table.items()
