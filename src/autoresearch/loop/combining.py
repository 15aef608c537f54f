"""With several workers, the loop's own proposal: the near-wins of the latest rounds, combined.

A round of N workers measures N changes of the same best at once, each alone. Several may come out better than
their base by more than the noise, yet not by the margin (near-wins), or win and go stale when another is kept
first; one worker would have built on each in turn. Where such changes set constants only (as a sweep of a
setting over several values does, which the prompt asks of agents with several workers), the best of them on
the latest two bests, on settings no better one of them set, are set at once in the best's train.py. That
train.py is trained and judged as any proposal is (the margin, a re-run, measuring it again): it is only a
proposal, made from measurements. A new one starts while others train only where it sets more settings than
each of them (a near-win judged meanwhile joins them), so that near-wins do not wait a round for a worker.
"""

from __future__ import annotations

from autoresearch.agents.base import Proposal, Usage
from autoresearch.loop import guard
from autoresearch.loop.engine import ResearchLoop
from autoresearch.loop.experiment import best_of
from autoresearch.loop.judge import measured_noise
from autoresearch.vocabulary import IN_FLIGHT, Kind, Status
from autoresearch.workspace.constants import changed_constants, read_constants, set_constants

COMBINER = "combine"  # the ledger's agent for these proposals
MIN_NEAR_WINS = 2  # one alone is a merge, which the ratchet makes already
NEAR_WIN = 1.0  # how much better than its base a change must be to be combined, in noise std (0.5, 1.5: worse)


def combination(loop: ResearchLoop) -> Proposal | None:
    """The near-wins measured on the best and on the best before it, combined on the best; None where fewer
    than two combine, a combination in flight sets as many settings, or that train.py is in flight, was measured
    on the best, or was combined before."""
    rows = loop.ledger.all()  # read once: the best and the noise are asked of these rows
    measured, best = measured_noise(rows), best_of(rows)
    if measured is None or best is None or best.val_bpb is None:
        return None
    noise = measured.noise
    flying = [e for e in rows if e.agent == COMBINER and e.status in IN_FLIGHT]
    kept = [e for e in rows if e.status == Status.KEEP and e.val_bpb is not None and e.id < best.id]
    bases = {e.commit: e for e in [*kept[-1:], best]}
    now = read_constants(best.source)
    # What the best changed of the best before it; where it changed code too, every setting (nothing older joins).
    kept_change = set(changed_constants(kept[-1].source, best.source) or now) if kept else set()
    found = []
    for exp in rows:
        base = bases.get(exp.parent)
        if exp.kind != Kind.EXPERIMENT or exp.status != Status.DISCARD or base is None or exp.val_bpb is None:
            continue
        gain = exp.val_bpb - base.val_bpb
        if gain >= -NEAR_WIN * noise:
            continue
        changes = changed_constants(base.source, exp.source)
        if changes is None or "SEED" in changes:
            continue
        if base is not best and changes.keys() & kept_change:
            continue  # an alternative to the change kept since: judged against it already
        if all(n in now and now[n].value == v for n, v in changes.items()):
            continue  # the best holds it already
        found.append((gain, exp.id, changes))
    chosen: dict = {}
    ids = []
    for _, exp_id, changes in sorted(found):
        if not chosen.keys() & changes.keys() and changes.keys() <= now.keys():
            chosen |= changes
            ids.append(exp_id)
    if len(ids) < MIN_NEAR_WINS:
        return None
    if any(len(changed_constants(best.source, e.source) or ()) >= len(chosen) for e in flying):
        return None  # one that sets as many trains already
    source = set_constants(best.source, chosen)
    if guard.rejection(best.source, source) or loop.duplicate_of(source, best.commit):
        return None
    if any(e.agent == COMBINER and e.source == source for e in rows):
        return None  # it crashed (a repeat of anything else is a duplicate): not tried again
    moves = ", ".join(f"{n} {now[n].value} -> {v}" for n, v in chosen.items() if now[n].value != v)
    described = f"near-wins of exp {', '.join(map(str, sorted(ids)))} combined: {moves}"
    return Proposal(described, source, Usage(cost_usd=0.0))
