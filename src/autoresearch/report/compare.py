"""`autoresearch show N` and `autoresearch diff A B`: one experiment, or two side by side, with train.py's diff.

An experiment's train.py is the source the ledger recorded when it ran; where that is missing (a rebuilt
ledger) it comes from git: its commit, kept ones on the branch as `exp N: ...`, discarded ones under
refs/autoresearch/discarded/N.
"""

from __future__ import annotations

import difflib

from autoresearch.errors import AutoresearchError
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.judge import run_values
from autoresearch.report.summary import best_before, explain, first_line, noise_before, signed, status_word
from autoresearch.visible import visible, visible_line
from autoresearch.vocabulary import Kind
from autoresearch.workspace.git import Git
from autoresearch.workspace.workspace import TRAIN_PY

DISCARDED = "refs/autoresearch/discarded/"


def find(experiments: list[Experiment], exp_id: int) -> Experiment:
    """The experiment with this number, or an error naming the numbers there are."""
    for exp in experiments:
        if exp.id == exp_id:
            return exp
    have = f"experiments {experiments[0].id}-{experiments[-1].id}" if experiments else "no experiments yet"
    raise AutoresearchError(f"no experiment {exp_id} in this workspace ({have})")


def train_py(git: Git, exp: Experiment) -> str | None:
    """The train.py the experiment ran, or None when it never had one (a proposal rejected before running)."""
    if exp.source:
        return exp.source
    for commit in (exp.commit, git.ref(f"{DISCARDED}{exp.id}"), git.exp_commits().get(exp.id)):
        if commit:
            try:
                return git.show(commit, TRAIN_PY)
            except AutoresearchError:
                continue
    return None


def no_train_py(exp: Experiment) -> str:
    """Why `train_py` found none: a proposal rejected before running has none; an experiment whose commit git has
    pruned (its ref deleted, then `git gc`; `rebuild-ledger` keeps its line) lost it."""
    if exp.kind == Kind.PROPOSAL:
        return "the proposal was rejected before it ran"
    return "git holds no commit of it (pruned: its ref deleted, then `git gc`), and its train.py went with it"


def diff(old: str, new: str, old_name: str, new_name: str) -> str:
    """The unified diff of two train.py sources, or a line saying they are the same."""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), f"train.py ({old_name})", f"train.py ({new_name})", lineterm=""
    )
    text = "\n".join(lines)
    return text or f"train.py is the same in {old_name} and {new_name}"


def summary_line(exp: Experiment, stopped: bool = False) -> str:
    bpb = f"val_bpb {exp.val_bpb:.6f}" if isinstance(exp.val_bpb, (int, float)) else "no val_bpb"
    return f"exp {exp.id} {status_word(exp.status, stopped).upper()} {bpb} | {exp.description}"


def show_text(git: Git, experiments: list[Experiment], exp_id: int, stopped: bool = False) -> str:
    """One experiment: its status, val_bpb and runs, why it went that way, where it is in git, its diff; `stopped`:
    no loop runs now."""
    exp = find(experiments, exp_id)
    why = explain(exp, best_before(experiments).get(exp.id), noise_before(experiments, exp), stopped)
    lines = [summary_line(exp, stopped), f"why: {why}"]
    if exp.reason and first_line(exp.reason) not in why:
        lines.append(f"the loop's reason: {visible_line(exp.reason)}")
    elif exp.reason and len(more := exp.reason.strip().splitlines()) > 1:  # why has its first line, show the rest
        lines += [f"  {line}" for line in more[1:]]  # a rejected answer's correction, say
    if len(runs := run_values(exp)) > 1:
        lines.append("runs: " + ", ".join(f"{v:.6f}" for v in runs))
    if exp.commit:
        where = f" ({DISCARDED}{exp.id})" if git.ref(f"{DISCARDED}{exp.id}") == exp.commit else ""
        lines.append(f"commit: {exp.commit[:10]}{where}")
    if exp.agent:
        cost = f", ${exp.cost_usd:.2f}" if exp.cost_usd is not None else ""
        model = f" ({exp.model})" if exp.model else ""
        lines.append(f"agent: {exp.agent}{model}, {exp.input_tokens:,} + {exp.output_tokens:,} tokens{cost}")
    if exp.training_seconds is not None:
        total = f" of {exp.total_seconds:.1f}s in the harness" if exp.total_seconds is not None else ""
        lines.append(f"training: {exp.training_seconds:.1f}s{total}")
    if own := own_output(exp.log_tail).strip():
        tail = own.splitlines()[-8:]
        lines += ["its log ends (the run's own output, untrusted):", *(f"  | {line}" for line in tail)]
    lines += ["", _parent_diff(git, experiments, exp)]
    return visible("\n".join(lines))


def own_output(log: str) -> str:
    """A run's log less the summary block the evaluator writes at its end (`---`, `val_bpb: ...`): what a crash
    says of itself (a traceback) comes before it, and the block's `invalid_reason` is the `why` already shown."""
    head, sep, block = log.rpartition("\n---\n")
    return head if sep and block.startswith("val_bpb:") else log


def diff_text(git: Git, experiments: list[Experiment], a: int, b: int, stopped: bool = False) -> str:
    """Two experiments' results, then the diff of train.py from the first to the second; `stopped`: no loop runs
    now."""
    first, second = find(experiments, a), find(experiments, b)
    lines = [summary_line(first, stopped), summary_line(second, stopped)]
    if isinstance(first.val_bpb, (int, float)) and isinstance(second.val_bpb, (int, float)):
        change = second.val_bpb - first.val_bpb
        lines.append(f"val_bpb {first.val_bpb:.6f} -> {second.val_bpb:.6f} ({signed(change, '.6f')})")
    sources = [train_py(git, e) for e in (first, second)]
    missing = [f"exp {e.id}: {no_train_py(e)}" for e, s in zip((first, second), sources, strict=True) if s is None]
    if missing:
        raise AutoresearchError(f"no train.py to diff: {'; '.join(missing)}")
    lines += ["", diff(sources[0], sources[1], f"exp {first.id}", f"exp {second.id}")]
    return visible("\n".join(lines))


def _parent_diff(git: Git, experiments: list[Experiment], exp: Experiment) -> str:
    source = train_py(git, exp)
    if source is None:
        return f"no train.py: {no_train_py(exp)}"
    if exp.kind == "baseline" or not exp.parent or exp.parent == exp.commit:
        return "the baseline: no parent to compare against"
    parent = next((e for e in experiments if e.commit == exp.parent and e.id < exp.id), None)
    if parent is not None and (old := train_py(git, parent)) is not None:
        name = f"exp {parent.id}"
    else:
        name = f"commit {exp.parent[:7]}"
        try:
            old = git.show(exp.parent, TRAIN_PY)
        except AutoresearchError:
            return f"its parent {exp.parent[:7]} is not in the repository: no diff"
    return f"diff against its parent ({name}):\n{diff(old, source, name, f'exp {exp.id}')}"
