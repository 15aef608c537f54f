"""The result file the harness writes after every run, and the summary block it prints.

The evaluator writes it, in a place the experiment cannot reach; the research loop reads the metric
from this file only. Nothing train.py prints counts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from autoresearch.files import write_json_atomic

RESULT_ENV = "AUTORESEARCH_RESULT"
PROGRESS_NAME = "progress.json"  # beside the result while a run goes (evaluator/session.py: Session.progress)
STARTING, TRAINING, EVALUATING = "starting", "training", "evaluating"  # its phases: before, on, after the clock


@dataclass(frozen=True)
class Result:
    val_bpb: float | None
    valid: bool
    invalid_reason: str | None
    training_seconds: float
    total_seconds: float
    untimed_seconds: float  # from "go" to the clock's start: start-up, compilation, the hand-over of the graph
    eval_seconds: float
    peak_memory_mb: float
    mfu_percent: float | None
    tokens_per_second: float
    total_tokens_M: float
    num_steps: int
    num_params_M: float
    epochs: int
    device: str
    preset: str
    dataset: str
    budget_seconds: float
    harness_fingerprint: str
    confined: bool  # the experiment ran in the sandbox (evaluator/sandbox.py)
    training_clock: str = "wall clock"  # what training_seconds counts (evaluator/clock.py)
    # The kind of device and the clock ("NVIDIA H200; wall clock"): scores measured on another are not compared.
    setup: str = ""

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Result:
        data = json.loads(Path(path).read_text())
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING})

    def summary(self) -> str:
        """The reference's block: `---`, then one `key: value` line per number."""
        bpb = f"{self.val_bpb:.6f}" if self.val_bpb is not None and math.isfinite(self.val_bpb) else "nan"
        mfu = f"{self.mfu_percent:.2f}" if self.mfu_percent is not None else "n/a"
        lines = [
            ("val_bpb", bpb),
            ("training_seconds", f"{self.training_seconds:.1f}"),
            ("training_clock", self.training_clock),
            ("total_seconds", f"{self.total_seconds:.1f}"),
            ("peak_memory_mb", f"{self.peak_memory_mb:.1f}"),
            ("mfu_percent", mfu),
            ("tokens_per_second", f"{self.tokens_per_second:,.0f}"),
            ("total_tokens_M", f"{self.total_tokens_M:.1f}"),
            ("num_steps", str(self.num_steps)),
            ("num_params_M", f"{self.num_params_M:.1f}"),
            ("device", self.device),
            ("valid", str(self.valid).lower()),
        ]
        if self.invalid_reason:
            lines.append(("invalid_reason", self.invalid_reason))
        return "---\n" + "\n".join(f"{k + ':':<20}{v}" for k, v in lines)


def result_path() -> Path:
    return Path(os.environ.get(RESULT_ENV, "result.json"))
