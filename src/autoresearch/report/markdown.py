"""report.md: what the research loop achieved, what it kept, what broke, what it cost, and the diff."""

from __future__ import annotations

import difflib
import json
import re
import time
from collections import Counter
from pathlib import Path

from autoresearch.files import write_text_atomic
from autoresearch.loop import activity
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.judge import MIN_NOISE, Noise, described, measured_noise
from autoresearch.report.summary import (
    Step,
    best_before,
    chain,
    clip,
    explain,
    finished,
    first_line,
    noises_before,
    signed,
    status_word,
)
from autoresearch.visible import visible
from autoresearch.vocabulary import Kind, Status

_STATUS_ORDER = [Status.KEEP, Status.DISCARD, Status.CRASH, Status.RUNNING]


def write_report(
    experiments: list[Experiment], path: Path, stopped: bool = False, found: list[activity.Period] = ()
) -> str:
    """Write the Markdown report of these experiments to path and return its text."""
    text = render_report(experiments, stopped, found)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)  # a reader, or a kill, meets the old report or the new one
    return text


def render_report(experiments: list[Experiment], stopped: bool = False, found: list[activity.Period] = ()) -> str:
    """The Markdown report of these experiments (any order; sorted by id here); `stopped`: no loop runs now; `found`:
    the times loops ran (activity.periods; none: the span of the experiments, the time between loops too)."""
    exps = sorted(experiments, key=lambda e: e.id)
    steps = chain(finished(exps))
    noise = measured_noise(exps)
    sections = [
        "# Research report",
        _overview(exps, stopped),
        "## Result\n\n" + _result(steps, noise),
        "## Kept changes\n\n" + _kept(steps),
        "## Every experiment\n\n" + _every(exps, stopped),
        "## Crashes\n\n" + _crashes(exps),
        "## Throughput\n\n" + _throughput(exps, list(found)),
        "## Tokens and cost by agent\n\n" + _agents(exps),
        "## train.py: best vs baseline\n\n" + _source_diff(steps),
    ]
    return visible("\n\n".join(sections) + "\n")  # what a run printed, or an agent wrote, spelled out


# -- sections -------------------------------------------------------------------------------------


def _overview(exps: list[Experiment], stopped: bool) -> str:
    if not exps:
        return "The ledger has no experiments yet."
    counts = Counter(e.status for e in exps)
    order = _STATUS_ORDER + sorted(set(counts) - set(_STATUS_ORDER))
    by_status = ", ".join(f"{counts[s]} {status_word(s, stopped)}" for s in order if counts[s])
    return f"{len(exps)} experiment{_s(len(exps))} in the ledger: {by_status}."


def _result(steps: list[Step], noise: Noise | None) -> str:
    if not steps:
        return "No kept experiment has a val_bpb yet, so there is no baseline to compare against."
    first, best = steps[0], steps[-1]
    start = "Baseline" if first.exp.kind == Kind.BASELINE else "First kept experiment"
    lines = [f"- {start}: **{first.value:.6f}** (#{first.exp.id})"]
    if setup := first.exp.recorded.get("setup"):
        lines.append(f"- Measured on: {setup} (a run measured on another device or clock is not compared)")
    if best is first:
        lines.append("- No change has beaten it yet.")
    else:
        change = best.value - first.value
        rel = f" ({signed(100 * change / first.value, '.2f')}%)" if first.value else ""
        changes = len(steps) - 1
        lines += [
            f"- Best: **{best.value:.6f}** (#{best.exp.id}, {_inline(best.exp.description)})",
            f"- Improvement: **{signed(change, '.6f')}** val_bpb{rel} from {changes} kept change{_s(changes)}",
        ]
    if noise is None:
        lines.append("- Noise: not measured (no kept baseline with its seeds' values)")
    else:
        lines += [
            f"- Noise: **{noise.noise:.6f}** ({described(noise)}, taken as at least {MIN_NOISE:g})",
            f"- Margin: **{noise.margin:.6f}**: a change is kept only if it beats the best by more than this",
        ]
    return "\n".join(lines)


def _kept(steps: list[Step]) -> str:
    changes = steps[1:]
    if not changes:
        return "None yet."
    rows = ["| # | val_bpb | Δ vs previous best | change | why kept |", "|---:|---:|---:|---|---|"]
    for step in changes:
        delta = step.delta or 0.0
        rel = f" ({signed(100 * step.relative, '.2f')}%)" if step.relative is not None else ""
        runs = _run_count(step.exp)
        value = f"{step.value:.6f}" + (f" (mean of {runs})" if runs > 1 else "")
        rows.append(
            f"| {step.exp.id} | {value} | {signed(delta, '.6f')}{rel} | {_cell(step.exp.description, 160)} "
            f"| {_cell(step.exp.reason, 160)} |"
        )
    return "\n".join(rows)


def _crashes(exps: list[Experiment]) -> str:
    crashed = [e for e in exps if e.status == Status.CRASH]
    if not crashed:
        return "None."
    lines = []
    for exp in crashed:
        # The reason says what went wrong; without one, a log's last line is usually the exception.
        why = first_line(exp.reason) or first_line(exp.log_tail, last=True) or "no reason recorded"
        why = why.replace("`", "'")
        lines.append(f"- **#{exp.id}** {_inline(exp.description, 100)}: `{why}`")
    return "\n".join(lines)


def _every(exps: list[Experiment], stopped: bool) -> str:
    if not exps:
        return "None yet."
    before, noises = best_before(exps), noises_before(exps)
    rows = ["| # | status | val_bpb | change | why |", "|---:|---|---:|---|---|"]
    for exp in exps:
        value = f"{exp.val_bpb:.6f}" if isinstance(exp.val_bpb, (int, float)) and exp.status != Status.CRASH else "—"
        why = explain(exp, before.get(exp.id), noises[exp.id], stopped)
        status = status_word(exp.status, stopped)
        rows.append(f"| {exp.id} | {status} | {value} | {_cell(exp.description, 80)} | {_cell(why, 240)} |")
    return "\n".join(rows)


def _throughput(exps: list[Experiment], found: list[activity.Period]) -> str:
    if (rated := activity.rated(exps)) is None:
        return "No experiment has finished yet."
    done, start, end, workers, spans = rated.done, rated.start, rated.end, rated.workers, rated.spans  # as status
    ran = activity.running(found, start, end, workers)  # the time loops ran, less the time between them
    period = f"{_clock(start)} to {_clock(end)}"
    if ran.seconds <= 0:
        return f"{len(done)} finished experiment{_s(len(done))} ({period}); no wall-clock time to rate them by."
    away = end - start - ran.seconds
    between = f"; no loop ran for {_duration(away)} of it" if away >= 1 else ""
    lines = [
        f"- {len(done)} finished experiment{_s(len(done))} in {_duration(ran.seconds)} of wall clock ({period}"
        f"{between}): **{len(done) / (ran.seconds / 3600):.1f} experiments per hour**"
    ]
    several = ran.worker_seconds > ran.seconds
    capacity, of = (ran.worker_seconds, "of the workers' wall clock") if several else (ran.seconds, "of wall clock")
    training = [_spent(e, e.training_seconds, start, end) for e in done if e.training_seconds is not None]
    totals = [_spent(e, e.total_seconds, start, end) for e in done if e.total_seconds is not None]
    if training:
        spent, idle = sum(training), max(capacity - sum(training), 0)
        lines.append(
            f"- Training: {_duration(spent)}, **{spent / capacity:.0%} {of}**; overhead "
            f"(start-up, compilation, evaluation, the agent's turns, git) {_duration(idle)}, {idle / capacity:.0%}"
        )
    if totals:
        lines.append(
            f"- Inside the harness (training plus its own overhead): {_duration(sum(totals))}, "
            f"{sum(totals) / capacity:.0%} {of}"
        )
    missing = len(done) - len(training)
    if missing:
        lines.append(f"- {missing} experiment{_s(missing)} recorded no training time (counted as overhead)")
    if len(workers) > 1:
        lines.append("\n" + _workers(done, spans, workers, start, end, ran))
    return "\n".join(lines)


def _spent(exp: Experiment, seconds: float, start: float, end: float) -> float:
    """The time an experiment's runs spent in the harness (or training: `seconds`, its last run's), as the busy
    fraction counts time: no more than its runs' spans cover of [start, end]. The ledger holds its last run's times
    and each run of it (the baseline's seeds, a re-run) is taken to have run as long, but a first run that compiled
    took longer than the rest, and runs of a kept change measured again may end after the last verdict: counted in
    full, the harness took more than the workers' wall clock (117% beside a busy fraction of 86%, a user's walk)."""
    try:
        runs = max(len(exp.run_values), 1)
    except ValueError:
        runs = 1
    ran = [s for s in activity.spans_of(exp) if s.end is not None]
    return min(seconds * runs, activity.busy_seconds(ran, start, end)) if ran else seconds * runs  # spans: recorded


def _workers(
    done: list[Experiment], spans: list[activity.Span], workers: list[str], start: float, end: float,
    ran: activity.Running,
) -> str:  # fmt: skip
    """A row per worker: its verdicts, their rate, its runs and its busy fraction, each over the seconds it ran
    within the report's span (`ran.by_worker`)."""
    seconds = ran.by_worker
    verdicts = Counter(e.worker for e in done if e.worker)
    _, rates = activity.per_hour(done, end - start, seconds)
    runs = Counter(s.worker for s in spans if s.end is not None)
    busy = {w: activity.busy_seconds([s for s in spans if s.worker == w], start, end) for w in workers}
    fraction = {w: min(1.0, busy[w] / seconds[w]) if seconds.get(w) else 0.0 for w in workers}
    together = sum(busy.values()) / sum(seconds.get(w, 0.0) for w in workers) if any(seconds.values()) else 0.0
    many = f"{len(workers)} workers"
    if ran.at_once < len(workers):  # a one-worker loop ("local") beside two-worker loops: 3 names, never 3 at once
        many = f"{ran.at_once} workers at a time ({len(workers)} over the loops)"
    rows = [
        f"{many}, busy **{min(1.0, together):.0%}** together: the share of the time each ran during "
        "which it had a run, from handing it over to its score (start-up and scoring included).",
        "",
        "| worker | experiments | per hour | runs | busy |",
        "|---|---:|---:|---:|---:|",
    ]
    for worker in workers:
        shown = f"{fraction[worker]:.0%}" if runs[worker] else "—"  # a ledger from before spans were recorded
        rate = rates.get(worker, 0.0)
        rows.append(f"| {_cell(worker)} | {verdicts[worker]} | {rate:.1f} | {runs[worker]} | {shown} |")
    return "\n".join(rows)


def _agents(exps: list[Experiment]) -> str:
    exps = [e for e in exps if e.kind != Kind.BASELINE]  # the loop's own run of train.py: no agent's, and free
    if not exps:
        return "No agent has run yet."
    groups: dict[str, list[Experiment]] = {}
    for exp in exps:
        groups.setdefault(exp.agent or "(none)", []).append(exp)
    rows = [
        "| agent | models | experiments | input tokens | output tokens | cost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for agent, group in sorted(groups.items()):
        models = ", ".join(sorted({e.model for e in group if e.model})) or "—"
        rows.append(f"| {_cell(agent)} | {_cell(models)} | {len(group)} | {_tokens(group)} | {_cost(group)} |")
    if len(groups) > 1:
        rows.append(f"| **total** | | {len(exps)} | {_tokens(exps)} | {_cost(exps)} |")
    return "\n".join(rows)


def _source_diff(steps: list[Step]) -> str:
    if not steps:
        return "No baseline yet."
    first, best = steps[0].exp, steps[-1].exp
    if best is first:
        return "The best is still the baseline: nothing to compare."
    missing = [f"#{e.id}" for e in (first, best) if not e.source]
    if missing:
        return f"The source of train.py was not recorded for {' and '.join(missing)}."
    diff = list(
        difflib.unified_diff(
            first.source.splitlines(),
            best.source.splitlines(),
            f"train.py (baseline #{first.id})",
            f"train.py (best #{best.id})",
            lineterm="",
        )
    )
    if not diff:
        return f"#{best.id} runs the same train.py as the baseline (its gain is noise or comes from elsewhere)."
    added = sum(1 for ln in diff[2:] if ln.startswith("+"))
    removed = sum(1 for ln in diff[2:] if ln.startswith("-"))
    body = "\n".join(diff)
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", body)), default=0))
    return f"{added} line{_s(added)} added, {removed} removed.\n\n{fence}diff\n{body}\n{fence}"


# -- formatting -----------------------------------------------------------------------------------


def _inline(text: str, width: int = 80) -> str:
    """Text on one line (whitespace collapsed), cut at a word boundary to width characters."""
    return clip(text, width)


def _cell(text: str, width: int = 1000) -> str:
    """Text fit for one Markdown table cell: one line, at most width characters, pipes escaped."""
    return _inline(text, width).replace("|", "\\|") or "—"


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _run_count(exp: Experiment) -> int:
    try:
        return len(json.loads(exp.runs))
    except (TypeError, ValueError):
        return 0


def _tokens(group: list[Experiment]) -> str:
    return f"{sum(e.input_tokens or 0 for e in group):,} | {sum(e.output_tokens or 0 for e in group):,}"


def _cost(group: list[Experiment]) -> str:
    known = [e.cost_usd for e in group if e.cost_usd is not None]
    unknown = len(group) - len(known)
    if not known:
        return "unknown"
    text = f"${sum(known):,.2f}"
    return text + (f" (+ {unknown} unknown)" if unknown else "")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
