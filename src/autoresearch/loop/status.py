"""`autoresearch status`: where a workspace stands, in a few lines."""

from __future__ import annotations

import time
from collections import Counter

from autoresearch.loop.judge import noise_of
from autoresearch.loop.ledger import KEEP, RUNNING, Ledger
from autoresearch.workspace.workspace import Workspace


def status_text(ws: Workspace) -> str:
    ledger = Ledger(ws.root)
    try:
        experiments = ledger.all()
    finally:
        ledger.close()
    a = ws.apparatus
    lines = [f"workspace {ws.root} on {ws.git.branch()}: preset {a.preset}, {a.dataset}, {a.budget_seconds:g}s budget"]
    if not experiments:
        return "\n".join([*lines, "no experiments yet: start with `autoresearch run` (or `autoresearch try`)"])
    baseline = experiments[0]
    kept = [e for e in experiments if e.status == KEEP]
    if kept:
        best = kept[-1]
        lines.append(f"best: exp {best.id} val_bpb {best.val_bpb:.6f} ({(best.commit or '')[:7]}) {best.description}")
        if baseline.status == KEEP and best is not baseline:
            gain = baseline.val_bpb - best.val_bpb
            lines.append(f"baseline {baseline.val_bpb:.6f} -> best {best.val_bpb:.6f}: {gain:.6f} better")
        if baseline.status == KEEP:
            lines.append(
                f"noise (std over {len(baseline.run_values)} baseline seeds): {noise_of(baseline.run_values):.6f}"
            )
    counts = Counter(e.status for e in experiments if e.status != RUNNING)
    lines.append("experiments: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    finished = [e for e in experiments if e.finished_at]
    if len(finished) > 1:
        hours = (finished[-1].finished_at - experiments[0].started_at) / 3600
        lines.append(f"rate: {len(finished) / hours:.1f} experiments per hour")
    if running := next((e for e in experiments if e.status == RUNNING), None):
        if ws.is_locked():
            lines.append(
                f"running: exp {running.id} for {time.time() - running.started_at:.0f}s: {running.description}"
            )
        else:
            lines.append(f"interrupted: exp {running.id} ({running.description}) will be re-run on the next start")
    elif ws.is_locked():
        lines.append("running: the agent is preparing the next experiment")
    return "\n".join(lines)
