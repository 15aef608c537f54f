"""The `tune` agent: valid small edits, inferred ranges, resuming from the ledger, and a synthetic optimization."""

from __future__ import annotations

import difflib
import json
import logging
import math
from importlib.resources import files
from pathlib import Path

import pytest

from autoresearch.agents.base import Context, PastExperiment, Proposal, ProposalError
from autoresearch.agents.tune import (
    BLIND_COST_RATIO,
    MIN_STEPS,
    TuneAgent,
    _tunable,
    comment_range,
    cost_limit,
    hyperparameters,
    make_knob,
    parse,
    step_cost,
)
from autoresearch.config.apparatus import CONFIG_NAME, Apparatus
from autoresearch.config.presets import get_preset
from autoresearch.workspace.constants import read_constants, set_constants
from autoresearch.workspace.init import train_py_for

TEMPLATE = files("autoresearch.workspace").joinpath("templates/train.py").read_text()
DETUNED = set_constants(TEMPLATE, {"MATRIX_LR": 0.005})  # the template's MATRIX_LR divided by 8


def values(source: str) -> dict[str, object]:
    return {name: c.value for name, c in read_constants(source).items()}


def diff(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a/train.py", "b/train.py"))


def context(best: str, best_bpb: float | None = 1.0, history: list[PastExperiment] | None = None) -> Context:
    return Context(Path("."), "", best, best_bpb, 0.001, list(history or []))


def objective(source: str) -> float | None:
    """A fake val_bpb, best at the template's values; None (a crash) for DEPTH > 16."""
    c = values(source)
    if c["DEPTH"] > 16:
        return None
    return (
        1.0
        + 0.05 * math.log(c["MATRIX_LR"] / 0.04) ** 2
        + 0.02 * math.log(c["EMBEDDING_LR"] / 0.8) ** 2
        + 0.02 * math.log(c["UNEMBEDDING_LR"] / 0.004) ** 2
        + 0.1 * (c["WARMDOWN_RATIO"] - 0.6) ** 2
        + 0.002 * (c["DEPTH"] - 8) ** 2
        + 0.01 * abs(math.log2(c["TOTAL_BATCH_SIZE"] / 2**18))
    )


def optimize(seed: int, rounds: int = 20) -> tuple[float, list[PastExperiment]]:
    """Propose, evaluate and keep if better from the detuned start; the fraction of the gap recovered."""
    agent = TuneAgent(seed=seed)
    best, best_bpb = DETUNED, objective(DETUNED)
    history = [PastExperiment(1, "keep", "baseline", best_bpb, "", best)]
    for i in range(rounds):
        proposal = agent.propose(context(best, best_bpb, history))
        bpb = objective(proposal.source)
        status = "crash" if bpb is None else "keep" if bpb < best_bpb else "discard"
        change = diff(best, proposal.source)
        history.append(PastExperiment(i + 2, status, proposal.description, bpb, change, proposal.source))
        if status == "keep":
            best, best_bpb = proposal.source, bpb
    start, optimum = objective(DETUNED), objective(TEMPLATE)
    return (start - best_bpb) / (start - optimum), history


OTHERS = {  # a small change of every other tunable constant of the template
    "DEPTH": 10,
    "ASPECT_RATIO": 128,
    "HEAD_DIM": 64,
    "ROPE_BASE": 100_000,
    "LOGIT_SOFTCAP": 20.0,
    "TOTAL_BATCH_SIZE": 2**19,
    "EMBEDDING_LR": 0.5,
    "UNEMBEDDING_LR": 0.008,
    "SCALAR_LR": 0.3,
    "WEIGHT_DECAY": 0.1,
    "WARMUP_RATIO": 0.05,
    "WARMDOWN_RATIO": 0.4,
    "FINAL_LR_FRAC": 0.05,
    "VE_GATE_CHANNELS": 64,
}


def lr_history() -> tuple[str, list[PastExperiment]]:
    """A ledger of 20 experiments from the detuned start where each larger MATRIX_LR won (0.005 -> 0.0071 ->
    0.01 -> 0.014 -> 0.02, all kept; a step back down lost) and a change of every other constant lost."""
    best, bpb = DETUNED, 1.2
    history = [PastExperiment(1, "keep", "baseline", bpb, "", best)]

    def add(changes: dict[str, object], status: str, value: float) -> None:
        new = set_constants(best, changes)
        history.append(PastExperiment(len(history) + 1, status, str(changes), value, diff(best, new), new))

    others = iter(OTHERS.items())
    for lr in [0.0071, 0.01, 0.014, 0.02]:
        for name, value in [next(others) for _ in range(3)]:
            add({name: value}, "discard", bpb + 0.01)
        bpb = 1.2 - 0.05 * math.log(lr / 0.005)
        add({"MATRIX_LR": lr}, "keep", bpb)
        best = history[-1].source
    add({"MATRIX_LR": 0.014}, "discard", 1.2 - 0.05 * math.log(0.014 / 0.005))
    for name, value in others:
        add({name: value}, "discard", bpb + 0.01)
    return best, history


def changed(old: str, new: str) -> dict[str, tuple[object, object]]:
    a, b = values(old), values(new)
    return {n: (a[n], b[n]) for n in a if a[n] != b[n]}


def check(proposal: Proposal, best: str) -> dict[str, tuple[object, object]]:
    """The checks every proposal must pass; returns its changes."""
    compile(proposal.source, "train.py", "exec")
    changes = changed(best, proposal.source)
    assert 1 <= len(changes) <= 3, proposal.description
    assert "SEED" not in changes
    assert proposal.description.startswith("tune: ")
    for name, (old, new) in changes.items():
        assert name in proposal.description
        assert type(new) is type(old), name
        if isinstance(old, int) and old >= 16 and old & (old - 1) == 0:
            assert new & (new - 1) == 0, f"{name} = {new} is no longer a power of two"
        if isinstance(new, float):
            assert new == float(f"{new:.3g}"), f"{name} = {new} has more than 3 significant digits"
    if "TOTAL_BATCH_SIZE" in changes or "DEVICE_BATCH_SIZE" in changes:
        old, new = values(best), values(proposal.source)
        assert new["TOTAL_BATCH_SIZE"] % new["DEVICE_BATCH_SIZE"] == 0
        if new["TOTAL_BATCH_SIZE"] < old["TOTAL_BATCH_SIZE"]:  # the accumulation count is kept
            assert new["TOTAL_BATCH_SIZE"] // new["DEVICE_BATCH_SIZE"] == 2**18 // 128
    return changes


def test_agent_identity_and_quiet_optuna() -> None:
    import optuna

    agent = TuneAgent()
    assert (agent.name, agent.model, agent.seed) == ("tune", "optuna-tpe", 0)
    assert optuna.logging.get_verbosity() >= logging.WARNING


def test_comment_ranges() -> None:
    assert comment_range("Muon learning rate (0.01-0.1)") == (0.01, 0.1)
    assert comment_range("tokens per step (2**12-2**20): smaller means") == (2**12, 2**20)
    assert comment_range("found 200K better than 10K (1e4-1e6)") == (1e4, 1e6)
    assert comment_range("blocks (2-24); the width") == (2, 24)
    assert comment_range("tokens an S layer looks back over (64 - sequence length)") is None
    assert comment_range("no range here") is None


def test_ranges_follow_the_rules() -> None:
    c = hyperparameters(DETUNED)
    lr = make_knob(c["MATRIX_LR"], [])
    assert lr.dist.log and (lr.dist.low, lr.dist.high) == (0.005, 0.1)  # comment range, widened to the value
    assert make_knob(c["MATRIX_LR"], [0.003, 0.2]).dist.low == 0.003  # and to every past value
    warmdown, decay = make_knob(c["WARMDOWN_RATIO"], []), make_knob(c["WEIGHT_DECAY"], [])
    assert not warmdown.dist.log and (warmdown.dist.low, warmdown.dist.high) == (0.2, 0.9)
    assert not decay.dist.log and (decay.dist.low, decay.dist.high) == (0.0, 0.5)
    batch = make_knob(c["TOTAL_BATCH_SIZE"], [])
    assert batch.pow2 and (batch.dist.low, batch.dist.high) == (12, 20)  # exponents of 2**12-2**20
    head = make_knob(c["VE_GATE_CHANNELS"], [])
    assert head.pow2 and (head.dist.low, head.dist.high) == (3, 6)  # (8-64): exponents of 2**3-2**6
    channels = make_knob(read_constants("CHANNELS = 32  # no range\n")["CHANNELS"], [])
    assert channels.pow2 and (channels.dist.low, channels.dist.high) == (3, 7)  # no comment range: exponent +-2
    depth = make_knob(c["DEPTH"], [])
    assert not depth.pow2 and (depth.dist.low, depth.dist.high) == (2, 24)  # DEPTH = 8 is a count
    rope = make_knob(c["ROPE_BASE"], [])
    assert rope.dist.log and (rope.dist.low, rope.dist.high) == (10_000, 1_000_000)
    bare = read_constants("SCALE = 0.3  # no range\nMIX_FRAC = 0.25\nZERO = 0.0\n")
    scale, frac = make_knob(bare["SCALE"], []), make_knob(bare["MIX_FRAC"], [])
    assert scale.dist.log and math.isclose(scale.dist.low, 0.075) and math.isclose(scale.dist.high, 1.2)
    assert not frac.dist.log and (frac.dist.low, frac.dist.high) == (0.0, 1.0)
    assert make_knob(bare["ZERO"], []) is None
    assert make_knob(c["WINDOW_PATTERN"], []) is None and make_knob(c["ADAM_BETAS"], []) is None


def test_hyperparameter_block_ends_at_the_next_section() -> None:
    block = hyperparameters(TEMPLATE)
    assert "MATRIX_LR" in block and "VE_GATE_CHANNELS" in block
    source = "import math\n\nA = 1  # (1-4)\nB = 0.5\n\n# ----\n# Model\nC = 2.0\n"
    assert set(read_constants(source)) == {"A", "B", "C"} and set(hyperparameters(source)) == {"A", "B"}


@pytest.mark.slow
def test_proposals_are_small_valid_edits() -> None:
    best, history = lr_history()
    seen_names: set[str] = set()
    for seed in range(12):
        for hist in ([], history):
            proposal = TuneAgent(seed=seed).propose(context(best, 1.0, hist))
            seen_names |= check(proposal, best).keys()
    assert len(seen_names) >= 8  # many different constants get tried
    assert not seen_names & {"SEED", "SHORT_WINDOW", "WINDOW_PATTERN", "ADAM_BETAS"}


@pytest.mark.slow
def test_description_names_each_change() -> None:
    proposal = TuneAgent(seed=3).propose(context(DETUNED))
    assert proposal.usage.cost_usd == 0.0  # offline: the report's cost for it is $0.00, not "unknown"
    changes = changed(DETUNED, proposal.source)
    for name in changes:
        assert f"{name} {read_constants(DETUNED)[name].text} -> " in proposal.description
        assert read_constants(proposal.source)[name].text in proposal.description


def test_what_is_never_tuned() -> None:
    names = _tunable(hyperparameters(TEMPLATE))
    assert "MATRIX_LR" in names and "TOTAL_BATCH_SIZE" in names
    assert not {"SEED", "DEVICE_BATCH_SIZE", "SHORT_WINDOW"} & set(names)  # no S layer: SHORT_WINDOW is inert
    assert "SHORT_WINDOW" in _tunable(hyperparameters(set_constants(TEMPLATE, {"WINDOW_PATTERN": "SL"})))
    odd_batch = set_constants(TEMPLATE, {"DEVICE_BATCH_SIZE": 96})
    assert "TOTAL_BATCH_SIZE" not in _tunable(hyperparameters(odd_batch))


def test_device_batch_shrinks_with_total_batch() -> None:
    constants = hyperparameters(TEMPLATE)  # 2**18 tokens in device batches of 128 rows
    smaller = {"TOTAL_BATCH_SIZE": 2**16}
    assert TuneAgent._couple_batch(smaller, constants) and smaller["DEVICE_BATCH_SIZE"] == 32
    larger = {"TOTAL_BATCH_SIZE": 2**19}
    assert TuneAgent._couple_batch(larger, constants) and "DEVICE_BATCH_SIZE" not in larger
    assert not TuneAgent._couple_batch({"TOTAL_BATCH_SIZE": 2**10}, constants)  # would need 1/2 a row


@pytest.mark.slow  # many Optuna trials: seconds
def test_rates_move_on_a_log_scale_within_range() -> None:
    knob = make_knob(hyperparameters(DETUNED)["MATRIX_LR"], [])
    assert knob.dist.log and (knob.dist.low, knob.dist.high) == (0.005, 0.1)
    lrs = []
    for seed in range(100):
        new = values(TuneAgent(seed=seed).propose(context(DETUNED)).source)["MATRIX_LR"]
        if new != 0.005:
            lrs.append(new)
    assert len(lrs) >= 10
    assert all(0.005 <= lr <= 0.1 for lr in lrs)
    # log-uniform puts half below the geometric middle of the range; uniform would put 18% there
    assert sum(lr < math.sqrt(0.005 * 0.1) for lr in lrs) >= 0.3 * len(lrs)


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_deterministic_for_seed_and_history() -> None:
    best, history = lr_history()
    a = TuneAgent(seed=7).propose(context(best, 1.0, history))
    b = TuneAgent(seed=7).propose(context(best, 1.0, history))
    assert a == b
    others = {TuneAgent(seed=s).propose(context(best, 1.0, history)).source for s in range(4)}
    assert len(others) > 1


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_proposal_depends_on_history() -> None:
    best, history = lr_history()
    with_history = [TuneAgent(seed=s).propose(context(best, 1.0, history)).source for s in range(4)]
    without = [TuneAgent(seed=s).propose(context(best, 1.0, [])).source for s in range(4)]
    assert with_history != without


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_resuming_follows_what_worked() -> None:
    """After a ledger where larger MATRIX_LR kept winning, the agent keeps varying it and mostly upwards."""
    best, history = lr_history()
    up = down = 0
    for seed in range(16):
        proposal = TuneAgent(seed=seed).propose(context(best, history[-1].val_bpb, history))
        assert parse(proposal.source)[1] not in {parse(e.source)[1] for e in history}
        lr = values(proposal.source)["MATRIX_LR"]
        up += lr > 0.02
        down += lr < 0.02
    assert up + down >= 8  # the knob that kept winning is picked most of the time
    assert up > 2 * down


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_crashes_are_learned_as_bad_values() -> None:
    best, history = lr_history()
    deep = set_constants(best, {"DEPTH": 20})
    history.append(PastExperiment(6, "crash", "deep", None, diff(best, deep), deep))
    agent = TuneAgent()
    study = agent._study(
        {n: make_knob(c, []) for n, c in hyperparameters(best).items() if n in ("DEPTH", "MATRIX_LR")},
        [(e, *parse(e.source)) for e in history],
        context(best, history[-2].val_bpb, history),
        0,
    )
    values_ = [t.value for t in study.trials]
    assert values_[-1] > max(values_[:-1])
    check(agent.propose(context(best, history[-2].val_bpb, history)), best)


def test_unusable_sources_raise_proposal_error() -> None:
    with pytest.raises(ProposalError):
        TuneAgent().propose(context("def broken(:\n"))
    with pytest.raises(ProposalError):
        TuneAgent().propose(context('NAME = "x"\nSEED = 1\n'))


@pytest.mark.slow  # many Optuna trials: seconds
def test_recovers_a_detuned_learning_rate_in_20_experiments() -> None:
    fractions = []
    for seed in range(3):
        fraction, history = optimize(seed)
        prints = [parse(e.source)[1] for e in history]
        assert len(set(prints)) == len(prints)  # never an exact repeat
        fractions.append(fraction)
    print("recovered fractions:", [round(f, 3) for f in fractions])
    assert min(fractions) >= 0.5
    assert sum(fractions) / len(fractions) >= 0.75


# -- what the device can afford -------------------------------------------------------------------------

TINY = get_preset("tiny")
TINY_PY = train_py_for(TINY)
# What the tune agent proposed on the tiny preset on a CPU before it knew costs (issue 9): the first hit the
# hard timeout, the second trained 4-6 steps.
WASTED = [{"TOTAL_BATCH_SIZE": 2**19}, {"DEPTH": 7, "ASPECT_RATIO": 128, "HEAD_DIM": 128}]


def tiny_workspace(tmp_path: Path, baseline_steps: list[int] = ()) -> Path:
    """A workspace of the tiny preset whose baseline (experiment 1) trained `baseline_steps` in its runs."""
    ws = tmp_path / "ws"
    ws.mkdir()
    Apparatus("tiny", "python-source", 60.0, str(tmp_path)).save(ws / CONFIG_NAME)
    for run, steps in enumerate(baseline_steps):
        (ws / ".autoresearch" / "runs" / f"1-{run}").mkdir(parents=True)
        (ws / ".autoresearch" / "runs" / f"1-{run}" / "result.json").write_text(
            json.dumps({"valid": True, "num_steps": steps, "val_bpb": 3.0})
        )
    return ws


def tiny_cost(source: str) -> float:
    return step_cost(values(source), TINY.seq_len, TINY.vocab_size)


def tiny_history() -> list[PastExperiment]:
    """The baseline, then the wasted proposals: a crash and a discard (their values widen the ranges)."""
    history = [PastExperiment(1, "keep", "baseline", 3.0, "", TINY_PY)]
    for i, (status, changes) in enumerate(zip(("crash", "discard"), WASTED, strict=True), start=2):
        source = set_constants(TINY_PY, changes)
        history.append(PastExperiment(i, status, str(changes), 3.4 if status == "discard" else None, "", source))
    return history


def proposals(ws: Path, seeds: int) -> list[str]:
    found = []
    for seed in range(seeds):
        for history in ([tiny_history()[0]], tiny_history()):
            found.append(TuneAgent(seed=seed).propose(Context(ws, "", TINY_PY, 3.0, 0.01, history)).source)
    return found


def test_the_cost_of_a_step_follows_tokens_depth_and_width() -> None:
    base = tiny_cost(TINY_PY)
    double = 2 * TINY.train_defaults["TOTAL_BATCH_SIZE"]
    assert tiny_cost(set_constants(TINY_PY, {"TOTAL_BATCH_SIZE": double})) == 2 * base
    assert tiny_cost(set_constants(TINY_PY, {"MATRIX_LR": 0.08})) == base
    for changes in WASTED:  # both far beyond what a CPU affords in a budget that fits ~100 baseline steps
        assert tiny_cost(set_constants(TINY_PY, changes)) > 20 * base
    assert step_cost({"LR": 0.1, "BATCH": 32}, 256, 2048) is None  # not the template: no estimate, no bound


@pytest.mark.slow  # many Optuna trials: seconds
def test_on_the_tiny_preset_no_proposal_costs_more_than_the_bound(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path)  # no measurement yet
    base = tiny_cost(TINY_PY)
    costs = [tiny_cost(source) for source in proposals(ws, seeds=25)]
    assert max(costs) <= BLIND_COST_RATIO * base * (1 + 1e-9)
    assert sum(cost > base for cost in costs) >= 2  # larger models and batches are still tried, within the bound
    assert cost_limit(Context(ws, "", TINY_PY, 3.0, 0.01, tiny_history())).limit == BLIND_COST_RATIO * base


@pytest.mark.slow
def test_each_proposal_keeps_a_dozen_steps_by_the_baselines_measured_count(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path, baseline_steps=[52, 48, 50])  # median 50 steps in the budget
    base = tiny_cost(TINY_PY)
    for source in proposals(ws, seeds=20):
        assert 50 * base / tiny_cost(source) >= MIN_STEPS * (1 - 1e-9)


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_slow_baseline_allows_no_costlier_step(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path, baseline_steps=[9, 11])
    base = tiny_cost(TINY_PY)
    assert all(tiny_cost(source) <= base for source in proposals(ws, seeds=10))


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_costly_best_stays_allowed(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path)
    best = set_constants(TINY_PY, {"TOTAL_BATCH_SIZE": 2**15, "DEVICE_BATCH_SIZE": 128})  # 8x the baseline
    history = [PastExperiment(1, "keep", "baseline", 3.0, "", TINY_PY)]
    for seed in range(10):
        proposal = TuneAgent(seed=seed).propose(Context(ws, "", best, 2.9, 0.01, history))
        assert 1 <= len(changed(best, proposal.source)) <= 3
        assert tiny_cost(proposal.source) <= tiny_cost(best)


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_experiments_in_flight_are_running_trials_the_constant_liar_samples_away_from(monkeypatch) -> None:
    import optuna

    studies = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(create(**kw)) or studies[-1])
    best, history = lr_history()
    flying = set_constants(best, {"MATRIX_LR": 0.03})
    running = PastExperiment(99, "running", "MATRIX_LR 0.03", None, diff(best, flying), flying)
    ctx = Context(Path("."), "", best, history[-1].val_bpb, 0.001, history, in_flight=[running])
    proposal = TuneAgent(seed=3).propose(ctx)
    assert values(proposal.source) != values(flying)
    (study,) = studies
    finished = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(finished) == len(history)
    added = study.trials[len(finished)]  # after the finished ones, before what the agent asked for itself
    assert added.state == optuna.trial.TrialState.RUNNING and added.params["MATRIX_LR"] == pytest.approx(0.03)
    assert study.sampler._constant_liar  # running trials count as bad results already in
