"""The `tune` agent: Optuna's TPE over the numeric constants of train.py's hyperparameter block, offline.

The block is the top-level ALL_CAPS constants up to the first `# ---` line after them. Every call rebuilds
the study from the ledger (`context.history`): each past train.py's constants become a finished trial
with its val_bpb; a crash gets a bad value (the worst seen plus a margin) so TPE learns to avoid it. So
the agent resumes where any run (or other agent) left off, and answers as a function of history and seed.

Ranges, inferred from the current best and the constant's comment, always widened to include the current
value and every value in the history (so every past trial fits):
- a `(a-b)` range in the comment is the range; without one, a positive v gets [v/4, 4v], a fraction
  (name ending in _RATIO, _FRAC or _FRACTION, value in [0, 1]) gets [0, 1], zero or negative is skipped;
- log scale when the range is positive and the constant is not a fraction, else linear;
- ints stay ints; an int power of two >= 16 (or written 2**n) is searched over its exponent (the
  comment's range or the current one +-2), so it stays a power of two; small counts (DEPTH = 8) are ints.
Never tuned: SEED (a luckier seed is no improvement), strings, bools, tuples, SHORT_WINDOW while
WINDOW_PATTERN has no S layer (it does nothing then), and DEVICE_BATCH_SIZE, which only trades memory
for speed and must divide TOTAL_BATCH_SIZE / sequence length. TOTAL_BATCH_SIZE is tuned only when both
are powers of two, and when it shrinks by 2**k DEVICE_BATCH_SIZE shrinks by 2**k too: the accumulation
count stays, and with it the divisibility that the current best met, without knowing the sequence length.

Which constants change: 1 to 3 per proposal (the rest stay at the current best), picked by Thompson
sampling on "changing this constant led to a keep": a Beta(1 + keeps, 1 + other outcomes) draw each,
with the constants a past experiment changed read from its diff. Untried constants draw from Beta(1, 1),
so the first ~8 proposals sweep all of them; then those whose changes were kept are picked again and
again while TPE narrows their values, and those that kept failing fade. Few changes at once keep credit
clean, and a good change is not drowned by bad ones (a random change of a tuned constant usually hurts).
TPE chooses values only for the picked constants. This recovers e.g. a learning rate detuned 8x within
~20 experiments. A proposal that repeats a past train.py is redrawn.

What the device can afford: a proposal must keep a reasonable number of optimizer steps in the budget. The
cost of a step is estimated from the shape constants (`step_cost`: tokens per step x (6 x the matmul
parameters + causal attention), with the preset's sequence length and vocabulary from autoresearch.json)
and compared with the baseline's (the first experiment of the ledger). With the baseline's measured step
count S (its run results), a step may cost at most min(MAX_COST_RATIO, S / MIN_STEPS) times the
baseline's, so the estimate keeps at least MIN_STEPS steps; before a measurement, at most BLIND_COST_RATIO
times. The current best's own cost is always allowed. The ranges of DEPTH, ASPECT_RATIO, HEAD_DIM and
TOTAL_BATCH_SIZE are cut to what fits alone, and a proposal whose changes together cost too much is redrawn.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import random
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from autoresearch.agents.base import Context, PastExperiment, Proposal, ProposalError, Usage
from autoresearch.config.apparatus import CONFIG_NAME, Apparatus
from autoresearch.config.presets import get_preset
from autoresearch.errors import AutoresearchError
from autoresearch.vocabulary import Status
from autoresearch.workspace.constants import Constant, format_value, read_constants, set_constants

NEVER_TUNED = frozenset({"SEED", "DEVICE_BATCH_SIZE"})
FRACTION_SUFFIXES = ("_RATIO", "_FRAC", "_FRACTION")
MAX_CHANGES = 3
MIN_STEPS = 24  # optimizer steps a proposal keeps in the budget, by the estimate from the baseline's count
MAX_COST_RATIO = 8.0  # a step never costs more than this many baseline steps, however fast the baseline was
BLIND_COST_RATIO = 4.0  # the limit before the baseline's steps are measured
COST_KNOBS = ("TOTAL_BATCH_SIZE", "DEPTH", "ASPECT_RATIO", "HEAD_DIM")  # what the cost of a step depends on
DEFAULT_SHAPE = (2048, 8192)  # sequence length and vocabulary when the workspace has no autoresearch.json
_LINEAR_SCAN = 4096  # a knob range up to this many values is checked value by value, a larger one by bisection
_ATTEMPTS = 64
_NUMBER = r"\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?(?:\*\*\d+)?"
_RANGE = re.compile(rf"\(\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\)")
_DIFF_NAME = re.compile(r"^[+-]([A-Z][A-Z0-9_]*)\s*=", re.MULTILINE)

FREE = Usage(0, 0, 0.0)  # offline: no tokens, no cost (the report says $0.00 for it, not "unknown")


def _number(text: str) -> float:
    base, _, exponent = text.replace("_", "").partition("**")
    return float(base) ** float(exponent) if exponent else float(base)


def comment_range(comment: str) -> tuple[float, float] | None:
    """The `(a-b)` range a constant's comment gives, if any."""
    match = _RANGE.search(comment)
    if not match:
        return None
    lo, hi = (_number(t) for t in match.groups())
    return (lo, hi) if lo < hi else None


def round_sig(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}") if value else 0.0


def _is_pow2(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value & (value - 1) == 0


@dataclass(frozen=True)
class Knob:
    """How one constant is searched: `dist` over its value, or over its base-2 exponent when `pow2`."""

    name: str
    dist: BaseDistribution
    pow2: bool = False

    def encode(self, value: object) -> float | int | None:
        """The trial parameter for a value, None when the value does not fit this knob."""
        if self.pow2:
            return value.bit_length() - 1 if _is_pow2(value) else None
        if isinstance(self.dist, IntDistribution):
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def decode(self, param: float) -> int | float:
        if self.pow2:
            return 2 ** int(param)
        if isinstance(self.dist, IntDistribution):
            return int(round_sig(param)) if abs(param) >= 1000 else int(param)
        return round_sig(param)


def make_knob(c: Constant, seen: list[object]) -> Knob | None:
    """The search range for constant `c` (see the module docstring), covering the `seen` past values."""
    v = c.value
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    given = comment_range(c.comment)
    if _is_pow2(v) and (v >= 16 or "**" in c.text):
        e0 = v.bit_length() - 1
        lo, hi = (e0 - 2, e0 + 2)
        if given and given[0] > 0:
            lo, hi = math.ceil(math.log2(given[0])), math.floor(math.log2(given[1]))
        exps = [e0] + [s.bit_length() - 1 for s in seen if _is_pow2(s)]
        return Knob(c.name, IntDistribution(max(0, min(lo, *exps)), max(hi, *exps)), pow2=True)
    fraction = c.name.endswith(FRACTION_SUFFIXES) and 0 <= v <= 1
    if given is None:
        if fraction:
            given = (0.0, 1.0)
        elif v > 0:
            given = (max(1, v // 4), v * 4) if isinstance(v, int) else (v / 4, v * 4)
        else:
            return None
    kinds = int if isinstance(v, int) else (int, float)  # what Knob.encode accepts
    numbers = [s for s in seen if isinstance(s, kinds) and not isinstance(s, bool)]
    lo, hi = min(given[0], v, *numbers), max(given[1], v, *numbers)
    log = lo > 0 and not fraction
    if isinstance(v, int):
        return Knob(c.name, IntDistribution(math.floor(lo), math.ceil(hi), log=log and lo >= 1))
    return Knob(c.name, FloatDistribution(lo, hi, log=log))


def _positive(values: Mapping[str, object], name: str) -> float:
    value = values.get(name, 1)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 1.0


def step_cost(values: Mapping[str, object], seq_len: int, vocab_size: int) -> float | None:
    """Estimated FLOPs of one optimizer step of the template's GPT from its constants: TOTAL_BATCH_SIZE
    tokens x (6 x (12 x DEPTH x width^2 + vocabulary x width) + 6 x DEPTH x seq_len x width), width being
    DEPTH x ASPECT_RATIO rounded up to a multiple of HEAD_DIM. None when train.py has none of COST_KNOBS."""
    if not any(name in values for name in COST_KNOBS):
        return None
    depth, head = _positive(values, "DEPTH"), _positive(values, "HEAD_DIM")
    width = math.ceil(depth * _positive(values, "ASPECT_RATIO") / head) * head
    per_token = 6 * (12 * depth * width**2 + vocab_size * width) + 6 * depth * seq_len * width
    return _positive(values, "TOTAL_BATCH_SIZE") * per_token


def workspace_shape(workspace: Path) -> tuple[int, int]:
    """The preset's (sequence length, vocabulary) from the workspace's autoresearch.json, else DEFAULT_SHAPE."""
    try:
        preset = get_preset(Apparatus.load(workspace / CONFIG_NAME).preset)
    except (AutoresearchError, OSError, TypeError):
        return DEFAULT_SHAPE
    return preset.seq_len, preset.vocab_size


def measured_steps(workspace: Path, experiment: int) -> float | None:
    """The median optimizer steps of an experiment's valid runs, from their result files; None if there are none."""
    steps = []
    for path in sorted((workspace / ".autoresearch" / "runs").glob(f"{experiment}-*/result.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        count = data.get("num_steps") if isinstance(data, dict) and data.get("valid") else None
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            steps.append(count)
    return statistics.median(steps) if steps else None


@dataclass(frozen=True)
class CostLimit:
    """The most an optimizer step of a proposal may cost, by `step_cost`, for a train.py's shape constants."""

    limit: float
    seq_len: int
    vocab_size: int

    def cost(self, values: Mapping[str, object]) -> float:
        return step_cost(values, self.seq_len, self.vocab_size) or 0.0

    def allows(self, values: Mapping[str, object]) -> bool:
        return self.cost(values) <= self.limit * (1 + 1e-9)


def _values(source: str) -> dict[str, object] | None:
    try:
        return {name: c.value for name, c in parse(source)[0].items()}
    except (SyntaxError, ValueError):
        return None


def cost_limit(context: Context, min_steps: int = MIN_STEPS) -> CostLimit | None:
    """What a proposal may cost per step (see the module docstring); None when train.py's cost is unknown."""
    seq_len, vocab_size = workspace_shape(context.workspace)
    best = _values(context.train_py) or {}
    baseline = (_values(context.history[0].source) if context.history else None) or best
    best_cost, baseline_cost = step_cost(best, seq_len, vocab_size), step_cost(baseline, seq_len, vocab_size)
    if best_cost is None or baseline_cost is None:
        return None
    steps = measured_steps(context.workspace, context.history[0].id) if context.history else None
    ratio = min(MAX_COST_RATIO, steps / min_steps) if steps else BLIND_COST_RATIO
    return CostLimit(max(ratio * baseline_cost, best_cost), seq_len, vocab_size)


def bound_knobs(knobs: dict[str, Knob], current: dict[str, object], limit: CostLimit) -> None:
    """Cut the upper end of each of COST_KNOBS' ranges to the largest value that fits the limit alone
    (with the other constants at `current`); a knob whose values all cost too much is dropped."""
    for name in COST_KNOBS:
        knob = knobs.get(name)
        if knob is None or not isinstance(knob.dist, IntDistribution):
            continue
        low, high = knob.dist.low, knob.dist.high

        def fits(param: int, knob: Knob = knob, name: str = name) -> bool:
            return limit.allows({**current, name: knob.decode(param)})

        if high - low <= _LINEAR_SCAN:
            top = max((p for p in range(low, high + 1) if fits(p)), default=None)
        else:  # the cost grows with the value: the last one that fits
            top = None
            while low <= high:
                middle = (low + high) // 2
                if fits(middle):
                    top, low = middle, middle + 1
                else:
                    high = middle - 1
        if top is None:
            del knobs[name]
        else:
            dist = IntDistribution(knob.dist.low, top, log=knob.dist.log, step=knob.dist.step)
            knobs[name] = Knob(name, dist, knob.pow2)


def _lines(source: str) -> list[str]:
    """Lines as Python (and `read_constants`) number them: split at LF, CRLF or CR only."""
    return io.StringIO(source, newline="").readlines()


def hyperparameters(source: str) -> dict[str, Constant]:
    """The constants of the hyperparameter block: those before the first `# ---` line after a constant."""
    constants = parse(source)[0]
    if not constants:
        return {}
    first = min(c.line for c in constants.values())
    lines = _lines(source)
    end = next((i + 1 for i in range(first, len(lines)) if lines[i].startswith("# ---")), len(lines) + 1)
    return {name: c for name, c in constants.items() if c.line < end}


def _tunable(constants: dict[str, Constant]) -> list[str]:
    names = [n for n in constants if n not in NEVER_TUNED and not n.endswith("_SEED")]
    if "WINDOW_PATTERN" in constants and "S" not in str(constants["WINDOW_PATTERN"].value):
        names = [n for n in names if n != "SHORT_WINDOW"]
    batch = constants.get("DEVICE_BATCH_SIZE")
    if batch is None or not _is_pow2(batch.value) or not _is_pow2(constants.get("TOTAL_BATCH_SIZE", batch).value):
        names = [n for n in names if n != "TOTAL_BATCH_SIZE"]
    return names


@functools.lru_cache(maxsize=1024)
def parse(source: str) -> tuple[dict[str, Constant], str]:
    """The constants of a train.py and its fingerprint, which two sources share when they are the same
    experiment: the same code and constant values, however the values are written or commented."""
    constants = read_constants(source)
    lines = [line.rstrip() for line in _lines(source)]
    for c in constants.values():
        lines[c.line - 1] = f"{c.name} = {c.value!r}"
    return constants, hashlib.sha256("\n".join(lines).encode()).hexdigest()


class TuneAgent:
    """Proposes train.py edits that change 1-3 hyperparameters, chosen by Optuna TPE from the ledger."""

    name = "tune"
    model = "optuna-tpe"
    shell = False  # in the loop's own process, writing no file: nothing outside the workspace to check after it

    def __init__(
        self, seed: int = 0, max_changes: int = MAX_CHANGES, n_startup_trials: int = 5, min_steps: int = MIN_STEPS
    ):
        if max_changes < 1:
            raise ValueError("max_changes must be at least 1")
        self.seed = seed
        self.max_changes = max_changes
        self.n_startup_trials = n_startup_trials
        self.min_steps = min_steps
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def preflight(self, workspace: Path) -> list[str]:
        """Offline: nothing to check."""
        return []

    def propose(self, context: Context) -> Proposal:
        """The current best with 1-3 constants changed; ProposalError when no new configuration is found."""
        try:
            constants = hyperparameters(context.train_py)
        except (SyntaxError, ValueError) as e:
            raise ProposalError(f"tune: the current train.py does not parse: {e}") from e
        past: list[tuple[PastExperiment, dict[str, Constant], str]] = []
        for exp in context.history:
            try:
                past.append((exp, *parse(exp.source)))
            except (SyntaxError, ValueError):
                continue
        knobs: dict[str, Knob] = {}
        for name in _tunable(constants):
            knob = make_knob(constants[name], [p[name].value for _, p, _ in past if name in p])
            if knob is not None:
                knobs[name] = knob
        current = {name: c.value for name, c in parse(context.train_py)[0].items()}
        limit = cost_limit(context, self.min_steps)
        if limit is not None:
            bound_knobs(knobs, current, limit)
        if not knobs:
            raise ProposalError("tune: train.py has no numeric hyperparameters to tune")

        step = self.seed * 1_000_003 + len(context.history) + 7919 * len(context.in_flight)
        rng = random.Random(step)
        study = self._study(knobs, past, context, step)
        seen = {fp for _, _, fp in past} | {parse(context.train_py)[1]}
        for exp in context.in_flight:  # what other workers train now is no new configuration either
            with contextlib.suppress(SyntaxError, ValueError):
                seen.add(parse(exp.source)[1])
        record = {n: [0, 0] for n in knobs}  # per knob: past experiments that changed it, and how many were kept
        for exp in context.history:
            for name in set(_DIFF_NAME.findall(exp.diff)) & knobs.keys():
                record[name][0] += 1
                record[name][1] += exp.status == Status.KEEP
        for _ in range(_ATTEMPTS):
            trial = study.ask({n: knobs[n].dist for n in self._pick(record, rng)})
            changes = {n: knobs[n].decode(p) for n, p in trial.params.items()}
            changes = {n: v for n, v in changes.items() if v != constants[n].value}
            if not self._couple_batch(changes, constants):
                continue
            if limit is not None and not limit.allows({**current, **changes}):
                continue  # together the changes cost more steps than the budget affords
            source = set_constants(context.train_py, changes)
            if changes and parse(source)[1] not in seen:
                moves = ", ".join(f"{n} {constants[n].text} -> {format_value(v)}" for n, v in changes.items())
                return Proposal(f"tune: {moves}", source, FREE)
        raise ProposalError("tune: found no new configuration to try")

    def _study(self, knobs: dict[str, Knob], past: list, context: Context, seed: int) -> optuna.Study:
        """An in-memory study holding every past experiment (and the current best) as a finished trial, and
        every experiment other workers train now as a running one: with the constant liar, TPE takes those as
        bad results already in, and samples away from them instead of proposing their neighbourhood again."""
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=self.n_startup_trials, multivariate=False, constant_liar=True
        )
        study = optuna.create_study(direction="minimize", sampler=sampler)
        runs = [(exp.val_bpb if exp.status != Status.CRASH else None, p) for exp, p, _ in past]
        current, current_print = parse(context.train_py)
        if context.best_bpb is not None and current_print not in {fp for _, _, fp in past}:
            runs.append((context.best_bpb, current))
        values = [v for v, _ in runs if v is not None and math.isfinite(v)]
        bad = max(values) + max(max(values) - min(values), 0.05) if values else 1.0
        for value, constants in runs:
            params = _params(knobs, constants)
            value = value if value is not None and math.isfinite(value) else bad
            dists = {n: knobs[n].dist for n in params}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
        for exp in context.in_flight:
            with contextlib.suppress(SyntaxError, ValueError):
                params = _params(knobs, parse(exp.source)[0])
                running = optuna.trial.TrialState.RUNNING
                dists = {n: knobs[n].dist for n in params}
                study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=running))
        return study

    def _pick(self, record: dict[str, list[int]], rng: random.Random) -> list[str]:
        """1 to max_changes knobs, by Thompson sampling on how often changing each one was kept."""
        budget = rng.randint(1, self.max_changes)
        draws = {n: rng.betavariate(1 + kept, 1 + tried - kept) for n, (tried, kept) in record.items()}
        chosen: list[str] = []
        for name in sorted(draws, key=lambda n: -draws[n]):
            cost = 2 if name == "TOTAL_BATCH_SIZE" else 1  # it may bring DEVICE_BATCH_SIZE along
            if cost <= budget:
                chosen.append(name)
                budget -= cost
        return chosen or [max(draws, key=lambda n: draws[n])]

    @staticmethod
    def _couple_batch(changes: dict[str, int | float], constants: dict[str, Constant]) -> bool:
        """Shrink DEVICE_BATCH_SIZE with TOTAL_BATCH_SIZE, keeping the accumulation count; False if impossible."""
        new = changes.get("TOTAL_BATCH_SIZE")
        old = constants["TOTAL_BATCH_SIZE"].value if new is not None else None
        if new is None or new >= old:
            return True
        device = constants["DEVICE_BATCH_SIZE"].value
        if device * new % old:
            return False
        changes["DEVICE_BATCH_SIZE"] = device * new // old
        return True


def _params(knobs: dict[str, Knob], constants: dict[str, Constant]) -> dict[str, float]:
    """A train.py's constants as the study's parameters: those of the knobs, where inside their ranges."""
    params = {}
    for name, knob in knobs.items():
        param = knob.encode(constants[name].value) if name in constants else None
        if param is not None and knob.dist.low <= param <= knob.dist.high:
            params[name] = param
    return params
