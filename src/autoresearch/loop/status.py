"""`autoresearch status`: where a workspace stands, in a few lines; and what a training run's log says of it.

A run's progress (step, time left on the training clock, tokens/s) is read from the file the evaluator
keeps beside the run's result while it runs (`.autoresearch/runs/<exp>-<run>/progress.json`, evaluator/
session.py), and, where there is none, from the log the evaluator copies the experiment's output to
(`log.txt`): the harness prints a line every few seconds of training. The loss is always the experiment's
own report, shown as what the run says, never used to judge.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from autoresearch.evaluator import result
from autoresearch.loop import activity
from autoresearch.loop.asking import backoff, failures_in_a_row
from autoresearch.loop.experiment import Experiment, best_of
from autoresearch.loop.judge import described, measured_noise
from autoresearch.loop.ledger import verified_rows
from autoresearch.report.summary import clip
from autoresearch.vocabulary import IN_FLIGHT, Status
from autoresearch.workspace.workspace import Workspace

STARTING, WARMING_UP, TRAINING, EVALUATING, FINISHED = "starting", "warming up", "training", "evaluating", "finished"
LOG_TAIL_BYTES = 64 * 1024  # enough for the last progress lines; a log may hold megabytes of output

# The harness's lines (harness/run.py): `step   120 |  40.0% | loss 3.4100 | 36s left`, `clock started after 5
# untimed steps; budget 60s`, `training done: 300 steps in 60.1s (after 5 untimed); handing the weights over`; the
# evaluator's summary block starts with `---`.
# Numbers as the harness writes them, no others: a line train.py printed that only looks like one is no progress.
_INT, _FLOAT = r"(\d{1,12})", r"(\d{1,12}(?:\.\d{1,12})?)"
_STEP = re.compile(rf"^step\s+{_INT}\s*\|\s*{_FLOAT}%\s*\|\s*loss\s+(\S+)\s*\|\s*{_FLOAT}s left")
_CLOCK = re.compile(r"^clock started\b")
_DONE = re.compile(rf"^training done:\s*{_INT} steps in {_FLOAT}s")
_WARMING = re.compile(r"^(model handed over|train data:)")


@dataclass(frozen=True)
class RunProgress:
    """What a training run's log says about it, as of its last line."""

    phase: str  # STARTING, WARMING_UP (before the clock), TRAINING, EVALUATING or FINISHED
    step: int | None = None
    loss: float | None = None
    fraction: float | None = None  # of the budget, at the last progress line
    seconds_left: float | None = None  # at the last progress line
    trained_seconds: float | None = None  # once training is done
    tokens_per_second: float | None = None  # counted by the evaluator (progress.json only)
    written: float | None = None  # when the source was last written (time.time())


def parse_progress(text: str) -> RunProgress:
    """The progress a run's log text shows (its last lines win)."""
    progress = RunProgress(STARTING)
    for raw in text.splitlines():
        line = raw.strip()
        if m := _STEP.match(line):
            loss = _number(m[3])
            progress = RunProgress(TRAINING, int(m[1]), loss, float(m[2]) / 100, float(m[4]))
        elif _CLOCK.match(line):
            progress = RunProgress(TRAINING, progress.step, progress.loss, 0.0)
        elif m := _DONE.match(line):
            progress = RunProgress(EVALUATING, int(m[1]), progress.loss, 1.0, 0.0, float(m[2]))
        elif line == "---" and progress.phase == EVALUATING:
            progress = RunProgress(FINISHED, progress.step, progress.loss, 1.0, 0.0, progress.trained_seconds)
        elif _WARMING.match(line) and progress.phase == STARTING:
            progress = RunProgress(WARMING_UP)
    return progress


def evaluator_progress(data: dict, written: float) -> RunProgress:
    """The progress the evaluator wrote (Session.progress)."""
    phases = {result.STARTING: WARMING_UP, result.TRAINING: TRAINING, result.EVALUATING: EVALUATING}
    phase = phases.get(data.get("phase"), STARTING)
    trained, budget = float(data.get("training_seconds") or 0.0), float(data.get("budget_seconds") or 0.0)
    loss, tps = data.get("reported_loss"), data.get("tokens_per_second")
    return RunProgress(
        phase,
        data.get("step"),
        float(loss) if isinstance(loss, int | float) else None,
        min(1.0, trained / budget) if budget else None,
        max(0.0, budget - trained) if phase == TRAINING else 0.0,
        trained if phase == EVALUATING else None,
        float(tps) if isinstance(tps, int | float) else None,
        written,
    )


def read_progress(log: Path) -> RunProgress | None:
    """The progress of the run whose log is `log`: the evaluator's progress file beside it, else the log's
    tail; None when there is neither."""
    progress = log.with_name(result.PROGRESS_NAME)
    try:
        return evaluator_progress(json.loads(progress.read_text()), progress.stat().st_mtime)
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # none (the run has not started, or has ended), or being replaced: the log says what it can
    try:
        with log.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    if size > LOG_TAIL_BYTES:
        text = text.partition("\n")[2]  # the first line is cut
    try:
        written = log.stat().st_mtime
    except OSError:
        written = None
    return replace(parse_progress(text), written=written)


def latest_run(state: Path, exp_id: int) -> tuple[int, Path] | None:
    """The newest training run of an experiment: (run index from 0, its directory), or None."""
    runs = []
    for path in state.glob(f"runs/{exp_id}-*"):
        index = path.name.rpartition("-")[2]
        if index.isdigit() and path.is_dir():
            runs.append((int(index), path))
    return max(runs) if runs else None


def running_text(ws: Workspace, running: Experiment, now: float | None = None, run: int | None = None) -> str:
    """One line on a run in flight (`run`, or the experiment's latest): its phase, step, loss, time left and
    tokens/s."""
    now = time.time() if now is None else now
    path = ws.state / "runs" / f"{running.id}-{run}"
    found = latest_run(ws.state, running.id) if run is None else (run, path) if path.is_dir() else None
    if found is None:
        return "  not training yet"
    index, run_dir = found
    log = run_dir / "log.txt"
    progress = read_progress(log)
    head = f"  run {index + 1}"
    if progress is None or progress.phase == STARTING:
        return f"{head}: starting (importing, compiling; not counted against the budget)"
    if progress.phase == WARMING_UP:
        return f"{head}: warming up before the clock starts"
    if progress.phase in (EVALUATING, FINISHED):
        return f"{head}: trained {progress.step} steps in {progress.trained_seconds:.1f}s; being scored"
    budget = ws.apparatus.budget_seconds
    parts = [f"{head}: training"]
    if progress.step is not None:
        parts.append(f"step {progress.step}")
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.seconds_left is not None:
        age = max(0.0, now - progress.written) if progress.written else 0.0  # written with that reading
        parts.append(f"{max(0.0, progress.seconds_left - age):.0f}s of {budget:g}s left")
    else:
        parts.append(f"{budget:g}s budget")
    if progress.tokens_per_second:
        parts.append(f"{progress.tokens_per_second:,.0f} tokens/s")
    return ", ".join(parts)


def status_text(ws: Workspace, experiments: list[Experiment] | None = None) -> str:
    """What `autoresearch status` prints; `experiments`: the ledger's rows, where the caller has just read them."""
    experiments = verified_rows(ws.root) if experiments is None else experiments
    a = ws.apparatus
    lines = [f"workspace {ws.root} on {ws.git.branch()}: preset {a.preset}, {a.dataset}, {a.budget_seconds:g}s budget"]
    if not experiments:
        return "\n".join([*lines, "no experiments yet: start with `autoresearch run` (or `autoresearch try`)"])
    baseline = experiments[0]
    if best := best_of(experiments):
        lines.append(f"best: exp {best.id} val_bpb {best.val_bpb:.6f} ({(best.commit or '')[:7]}) {best.description}")
        if baseline.status == Status.KEEP and best is not baseline:
            gain = baseline.val_bpb - best.val_bpb
            lines.append(f"baseline {baseline.val_bpb:.6f} -> best {best.val_bpb:.6f}: {gain:.6f} better")
        if noise := measured_noise(experiments):
            lines.append(
                f"noise ({described(noise)}): {noise.noise:.6f}; margin {noise.margin:.6f} "
                "(a change must beat the best by more than this)"
            )
    counts = Counter(e.status for e in experiments if e.status not in IN_FLIGHT)
    lines.append("experiments: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none finished yet"))
    if (rated := activity.rated(experiments)) and len(rated.done) > 1:  # as the report counts them
        found = activity.periods(ws.state, experiments)
        ran = activity.running(found, rated.start, rated.end, rated.workers)  # less the time between loops
        total, by_worker = activity.per_hour(rated.done, ran.seconds, ran.by_worker)
        lines.append(f"rate: {total:.1f} experiments per hour{_per_worker(by_worker)}")
    in_flight = [e for e in experiments if e.status in IN_FLIGHT]
    locked = ws.is_locked()
    session = activity.read_session(ws.state) if locked else None
    if session is not None and len(session.workers) > 1:  # one line each, idle ones too
        lines += workers_text(ws, experiments, session, time.time())
        lines += [f"queued: exp {e.id}: {e.description}" for e in in_flight if e.status == Status.QUEUED]
    elif in_flight and locked:
        for running in in_flight:
            where = f" on {running.worker}" if running.worker else ""
            if running.status == Status.QUEUED:
                lines.append(f"queued: exp {running.id}: {running.description}")
                continue
            # Since this loop took it up: one resumed after a kill trains it anew, and the night between is not its
            since = max(running.started_at, session.started) if session is not None else running.started_at
            lines.append(f"running: exp {running.id}{where} for {time.time() - since:.0f}s: {running.description}")
            lines.append(running_text(ws, running))
    elif in_flight:
        for running in in_flight:
            if running.status == Status.QUEUED:  # submitted, or made by the loop: it never started
                lines.append(f"queued: exp {running.id} ({running.description}) will be trained on the next start")
            else:
                lines.append(f"interrupted: exp {running.id} ({running.description}) will be re-run on the next start")
    elif locked and session is not None and not session.asking:
        lines.append("running: waiting for a submission (`autoresearch submit`)")
    elif locked:
        lines.append(_between_experiments(experiments, session))
    return "\n".join(lines)


def _between_experiments(experiments: list[Experiment], session: activity.Session | None) -> str:
    """The one-worker loop between experiments: its agent's turn, or the pause after asks of it that failed in a row
    (an API down: up to 15 min at a time, which only the loop's own output said; `Asking.failure_pause`)."""
    last = experiments[-1]
    failures = failures_in_a_row(experiments, last.agent)
    ended = last.finished_at or 0.0
    left = ended + backoff(failures) - time.time()
    if left > 0 and ended >= (session.started if session is not None else 0.0):  # a start asks at once, unpaused
        why = clip(last.reason.removeprefix("rejected: "), 200)
        return (
            f"running: waiting {left:.0f}s before asking {last.agent} again: it failed {failures} times in a row; "
            f"the last (exp {last.id}): {why}"
        )
    return "running: the agent is preparing the next experiment"


def workers_text(ws: Workspace, experiments: list[Experiment], session: activity.Session, now: float) -> list[str]:
    """The running loop's workers: their busy fraction since it started; for each its run and how far it is."""
    spans = [s for e in experiments for s in activity.spans_of(e)]
    busy = activity.busy_by_worker(spans, session.started, now, now, session.workers)
    up = _duration(now - session.started)
    lines = [f"workers: {len(busy)}, busy {activity.overall(busy):.0%} of the {up} since the loop started"]
    by_id = {e.id: e for e in experiments}
    for worker in session.workers:
        head = f"  {worker} (busy {busy[worker]:.0%})"
        running = [s for s in spans if s.worker == worker and s.end is None and s.start >= session.started]
        if not running:
            lines.append(f"{head}: idle")
            continue
        span, exp = running[-1], by_id[running[-1].exp_id]
        again = " (kept, measured again)" if exp.status == Status.KEEP else ""
        took = _duration(now - span.start)
        lines.append(f"{head}: exp {exp.id}{again} run {span.run + 1} for {took}: {exp.description}")
        lines.append("  " + running_text(ws, exp, now, span.run))
    return lines


def _per_worker(by_worker: dict[str, float]) -> str:
    """Experiments per hour of each worker, where there were several."""
    if len(by_worker) < 2:
        return ""
    return " (" + ", ".join(f"{worker}: {rate:.1f}" for worker, rate in by_worker.items()) + ")"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
