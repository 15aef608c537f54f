"""The result file the harness writes after every run, and the summary block it prints.

The evaluator writes it, in a place the experiment cannot reach; the research loop reads the metric
from this file only. Nothing train.py prints counts.

The file lies in the workspace's private state, where a process of the same user (a coding agent whose
turn overlaps other workers' runs, say) could replace it between the evaluator's write and the loop's
read. So the loop gives each run's evaluator a secret key with the job, over a pipe, and takes the
result only if it carries that key's seal (an HMAC over its fields): a result written by anyone else
is refused. At rest, after the run, the file is a record (`rebuild-ledger` reads it), not a proof.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from autoresearch.evaluator.clock import WALL_CLOCK
from autoresearch.files import read_regular, write_json_atomic

RESULT_ENV = "AUTORESEARCH_RESULT"
PROGRESS_NAME = "progress.json"  # beside the result while a run goes (evaluator/session.py: Session.progress)
STARTING, TRAINING, EVALUATING = "starting", "training", "evaluating"  # its phases: before, on, after the clock


RESULT_LIMIT = 1 << 20  # the largest result file read: one is under 2 KiB
SEAL = "seal"  # the result file's field that holds the HMAC of the others


class ForgedResult(Exception):
    """A result file without its run's seal: not what the evaluator wrote."""


def _seal(data: dict, key: str) -> str:
    return hmac.new(key.encode(), json.dumps(data, sort_keys=True).encode(), hashlib.sha256).hexdigest()


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
    training_clock: str = WALL_CLOCK  # what training_seconds counts (evaluator/clock.py)
    # The kind of device and the clock ("NVIDIA H200; wall clock"): scores measured on another are not compared.
    setup: str = ""
    # The torch that trained and scored it ("2.11.0+cu130"): another compiles and runs the model otherwise (its
    # kernels, its compiler: the steps a budget trains), so its scores are not compared either. "": not recorded.
    torch: str = ""
    # What the run compiled, staged beside this result (compile_cache.digest): joins the shared cache only as sealed.
    compiled: str = ""
    # Invalid for its time (Session.late): past the budget and the last step's grace, or its hand-over's. A stall of
    # the machine in an honest run's last step does that too: the loop trains a late baseline run once more.
    late: bool = False

    def save(self, path: Path, key: str | None = None) -> None:
        """Write the result; with `key`, sealed with it (the loop's run: see the module's docstring)."""
        data = asdict(self)
        write_json_atomic(path, {**data, SEAL: _seal(data, key)} if key else data)

    @classmethod
    def load(cls, path: Path, key: str | None = None) -> Result:
        """The result in `path`; with `key`, only if it carries that key's seal (ForgedResult if not)."""
        data = json.loads(read_regular(Path(path), RESULT_LIMIT))  # a FIFO put in its place would wedge the reader
        if key is not None:
            seal = data.pop(SEAL, None)
            if not isinstance(seal, str) or not hmac.compare_digest(seal, _seal(data, key)):
                raise ForgedResult(f"{path} does not carry its evaluator's seal: written or changed by another process")
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
