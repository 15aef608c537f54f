"""Every run of the benchmark workspaces given, from their ledgers and result files, into one JSON file: what a
device call keeps even when a benchmark was stopped at its time limit before writing its own summary.

    PYTHONPATH=$PWD/src python3 bench/collect_runs.py OUT.json WORKSPACE...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import start_up

from autoresearch.loop.ledger import Ledger

KEYS = (
    "val_bpb",
    "device",
    "total_seconds",
    "untimed_seconds",
    "eval_seconds",
    "training_seconds",
    "num_steps",
    "tokens_per_second",
)


def collect(workspace: Path) -> dict:
    experiments = []
    for exp in Ledger(workspace, check_history=False).all():
        runs = {}
        for path in sorted(workspace.glob(f".autoresearch/runs/{exp.id}-*/result.json")):
            result = json.loads(path.read_text())
            runs[path.parent.name] = {key: result.get(key) for key in KEYS} | start_up(path.parent / "log.txt")
        experiments.append(
            {
                "id": exp.id,
                "status": str(exp.status),
                "description": exp.description,
                "runs": exp.run_values,
                "seeds": exp.run_indices,
                "spans": json.loads(exp.spans),
                "started_at": exp.started_at,
                "finished_at": exp.finished_at,
                "results": runs,
            }
        )
    return {"workspace": str(workspace), "experiments": experiments}


if __name__ == "__main__":
    out, *workspaces = sys.argv[1:]
    found = [collect(Path(w)) for w in workspaces if Path(w, ".autoresearch").is_dir()]
    Path(out).write_text(json.dumps(found, indent=1))
    print(f"collected {sum(len(w['experiments']) for w in found)} experiments of {len(found)} workspaces into {out}")
