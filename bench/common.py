"""What the loop benchmarks share: a fresh workspace on python-source, and the loop over it."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from autoresearch.config.paths import cache_root
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.loop.engine import LoopConfig, ResearchLoop
from autoresearch.loop.executor import LocalExecutor
from autoresearch.loop.reporter import PlainReporter
from autoresearch.workspace.init import create_workspace
from autoresearch.workspace.workspace import Workspace


def fresh_loop(
    work: Path,
    preset_name: str,
    budget: float | None,
    baseline_runs: int,
    train_overrides: dict[str, Any] | None = None,
) -> ResearchLoop:
    """`work` emptied and made a workspace (data prepared if needed), with a loop that prints each event.
    `train_overrides` replaces train.py constants of the preset's starting point (the baseline)."""
    shutil.rmtree(work, ignore_errors=True)
    preset = get_preset(preset_name)
    if train_overrides:
        preset = replace(preset, train_defaults=MappingProxyType({**preset.train_defaults, **train_overrides}))
    data_dir = prepare("python-source", preset, cache_root())
    create_workspace(work, preset, "python-source", data_dir, budget, tag="bench")
    return ResearchLoop(
        Workspace(work),
        LocalExecutor(),
        PlainReporter(lambda text: print(text, flush=True)),
        LoopConfig(baseline_runs=baseline_runs),
    )


START_UP_MARKS = {  # what a run's log says about its start-up, in seconds
    "harness_start_s": r"harness\.start\(\) at ([\d.]+)s",  # after "go" (the evaluator's "start-up:" line)
    "graph_s": r"the graph at ([\d.]+)s",  # after "go"
    "export_s": r"graph exported in ([\d.]+)s",  # train.py's set_model()
    "first_step_s": r"untimed step 1 of \d+: ([\d.]+)s",  # compilation, mostly
    "second_step_s": r"untimed step 2 of \d+: ([\d.]+)s",
    "third_step_s": r"untimed step 3 of \d+: ([\d.]+)s",
}


def start_up(log: Path) -> dict[str, float]:
    """The start-up marks found in a run's log."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return {key: float(m[1]) for key, pattern in START_UP_MARKS.items() if (m := re.search(pattern, text))}
