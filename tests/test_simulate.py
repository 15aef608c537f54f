"""bench/simulate.py: the real scheduler in simulated time, and the accounting its numbers come from."""

from __future__ import annotations

import importlib.util
import itertools
import queue
import random
import statistics
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoresearch.vocabulary import Kind, Status

BENCH = Path(__file__).resolve().parent.parent / "bench" / "simulate.py"


def load_simulate():
    spec = importlib.util.spec_from_file_location("simulate", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulate"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


simulate = load_simulate()


def test_the_simulated_clock_hands_reports_over_in_the_order_of_their_simulated_ends():
    clock = simulate.SimClock(driver_rate=0.0)
    workers = [SimpleNamespace(job=object()) for _ in range(3)]
    clock.workers = workers
    events: queue.SimpleQueue = queue.SimpleQueue()

    def run(seconds: float) -> None:
        events.put((seconds, clock.run_for(seconds)))

    for seconds in (30.0, 10.0, 20.0):
        threading.Thread(target=run, args=(seconds,), daemon=True).start()
    seen = []
    for worker in workers:
        seconds, (start, end) = clock.next_event(events, timeout=1.0)
        seen.append((seconds, start, end, clock.now()))
        worker.job = None
    assert seen == [(10.0, 0.0, 10.0, 10.0), (20.0, 0.0, 20.0, 20.0), (30.0, 0.0, 30.0, 30.0)]
    clock.sleep(5.0)  # the driver blocked (an agent thinking): simulated time goes on
    assert clock.now() == 35.0


def test_each_landscape_draw_gives_the_baseline_s_seeds_their_own_noise_and_a_file_the_same_score_again():
    # The baseline's seeds estimate the judge's noise. Drawn the same in every simulation, they gave the one-worker
    # reference the same low estimate (0.5-0.7 x the true noise) in every draw: a lenient judge, every time.
    landscape = simulate.Landscape(seed_noise=0.0015, run_noise=0.0)
    seeds = [simulate.TRAIN_PY.replace("SEED = 42", f"SEED = {s}") for s in (42, 43, 44)]

    def noise(draw: int) -> float:
        return statistics.stdev(landscape.measured(source, random.Random(0), draw) for source in seeds)

    estimates = [noise(draw) for draw in range(40)]
    assert len(set(estimates)) == 40 and noise(7) == noise(7)
    assert min(estimates) < 0.0015 / 2 and max(estimates) > 0.0015 * 1.5  # spread as 3 seeds' std is


@pytest.mark.slow  # the real loop over simulated hours: ~2 s
def test_four_workers_run_the_real_loop_and_the_counts_agree_with_the_ledger_and_the_executors(tmp_path, tiny_prepared):
    noiseless = simulate.Landscape(seed_noise=0.0, run_noise=0.0)
    sim = simulate.Simulation(4, hours=0.5, seed=1, landscape=noiseless, driver_rate=0.0)
    loop, recorder, cpu = sim.run(tmp_path / "sim", tiny_prepared)
    rows = loop.ledger.all()
    assert rows[0].kind == Kind.BASELINE and all(r.status.final for r in rows)
    # Every run the executors made is in the ledger: a value of its experiment, or the crash that ended it.
    values = sum(len(r.run_values) for r in rows)
    crashed = [r for r in sim.records if r.crashed]
    assert values + len(crashed) == len(sim.records)
    assert {r.run.split("-")[0] for r in crashed} <= {str(r.id) for r in rows if r.status == Status.CRASH}
    # A worker never trains two runs at once, and the four share the work.
    for label in {r.worker for r in sim.records}:
        mine = sorted((r.start, r.end) for r in sim.records if r.worker == label)
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(mine))
    assert len({r.worker for r in sim.records}) == 4

    m = simulate.measure(sim, loop, recorder, cpu, target=sim.landscape.true_bpb(simulate.TRAIN_PY))
    judged = [r for r in rows if r.kind == Kind.EXPERIMENT]
    assert 0 < m.experiments <= len(judged)
    ended = [r for r in sim.records if r.end <= 1800]  # runs that ended within the half hour
    assert 16 <= len(ended) <= 4 * 1800 / (sim.runs.budget + 5)  # 4 GPUs, runs of 305-500 s
    assert m.experiments <= len(ended) - 4  # the baseline's seeds, one per worker, are not experiments
    assert m.experiments_per_hour == m.experiments / 0.5
    assert 0.5 < m.busy <= 1.0 + 1e-9  # a sum of floats: 1.0000000000000002 when no GPU ever waits
    assert m.hours_to_target == recorder.verdicts[0][0] / 3600  # the baseline itself is that good
    # Without noise nothing truly worse is kept, and the best improved on the starting train.py.
    assert m.keeps > 0 and m.false_keeps == 0
    assert m.best_true < sim.landscape.true_bpb(simulate.TRAIN_PY)
    assert m.rejected_proposals == sum(r.kind == Kind.PROPOSAL for r in rows)


@pytest.mark.slow  # the real loop over simulated hours: ~2 s
def test_an_agent_that_thinks_long_keeps_the_workers_waiting(tmp_path, tiny_prepared):
    quick = simulate.Simulation(4, hours=0.4, driver_rate=0.0)
    slow = simulate.Simulation(4, hours=0.4, driver_rate=0.0, propose_seconds=200.0)
    busy = []
    for name, sim in (("quick", quick), ("slow", slow)):
        loop, recorder, cpu = sim.run(tmp_path / name, tiny_prepared)
        busy.append(simulate.measure(sim, loop, recorder, cpu, None).busy)
    # 4 proposals of 200 s each per 315 s run: the driver can keep fewer than 2 workers busy.
    assert busy[1] < 0.6 < busy[0]


def test_the_wave_agent_sweeps_the_setting_fewest_changes_in_flight_move_at_values_none_holds(tmp_path):
    """With changes in flight, `--agent wave` proposes one value of a sweep: the constant the fewest of them move
    alone, at the nearest value of its grid that no change in flight or measured holds; with none in flight, a
    nudge, as `nudge-apart` makes it (the one-worker reference is the same run). Every value held, two settings
    at once."""
    from autoresearch.agents.base import Context, PastExperiment
    from autoresearch.workspace.constants import read_constants, set_constants

    base = simulate.TRAIN_PY

    def past(values: dict, exp_id: int, status: str = "running") -> PastExperiment:
        return PastExperiment(exp_id, status, "", None, "", set_constants(base, values))

    others = {"LR": [0.0057, 0.0028], "BATCH": [64], "WARMUP_FRAC": [0.04], "WEIGHT_DECAY": [0.14]}
    flying = [past({name: v}, i) for i, (name, vs) in enumerate(others.items()) for v in vs]
    measured = [past({"DROPOUT": 0.09}, 10, "discard")]  # DROPOUT's nearest value, measured on this best already
    context = Context(tmp_path, "", base, 0.58, 0.0015, history=measured, in_flight=flying)
    agent = simulate.NudgeAgent(0, simulate.SimClock(), 0.0, apart=True, wave=True)
    proposal = agent.propose(context)
    assert proposal.description == "sweep DROPOUT 0.05 -> 0.01"  # no DROPOUT in flight; 0.09 measured
    assert read_constants(proposal.source)["DROPOUT"].value == 0.01
    assert simulate.NudgeAgent._grid("LR", 0.004) == [0.0057, 0.0028, 0.008, 0.002, 0.011, 0.0014]

    # Every value of every sweep measured (64 workers use them up within a round): two settings at once, each at
    # its grid's nearest value, not a repeat for the loop to refuse.
    current = {name: float(c.value) for name, c in read_constants(base).items() if name in simulate.BOWLS}
    swept = [
        past({name: v}, 100 + i)
        for i, (name, v) in enumerate((n, v) for n in current for v in simulate.NudgeAgent._grid(n, current[n]))
    ]
    used_up = Context(tmp_path, "", base, 0.58, 0.0015, history=swept, in_flight=flying[:1])
    pair = read_constants(agent.propose(used_up).source)
    moved = {name: pair[name].value for name in current if pair[name].value != current[name]}
    assert len(moved) == 2 and all(v == simulate.NudgeAgent._grid(n, current[n])[0] for n, v in moved.items())

    alone = Context(tmp_path, "", base, 0.58, 0.0015)
    nudge = simulate.NudgeAgent(3, simulate.SimClock(), 0.0, apart=True)
    wave = simulate.NudgeAgent(3, simulate.SimClock(), 0.0, apart=True, wave=True)
    assert [wave.propose(alone) for _ in range(5)] == [nudge.propose(alone) for _ in range(5)]


@pytest.mark.slow  # the real loop over one simulated hour, then two: ~3 s
def test_a_reference_of_more_baseline_seeds_is_measured_against_another_runs_final_best(tmp_path, tiny_prepared):
    """`--baseline-runs` and `--target-from`: how BENCHMARKS.md tells a slower reference from a cheaper loop."""
    noiseless = simulate.Landscape(seed_noise=0.0, run_noise=0.0)
    options = {"landscape": noiseless, "driver_rate": 0.0}
    theirs = simulate.simulate_all([1], 1.0, 2.5, tmp_path / "theirs", tiny_prepared, seed=3, **options)[0]
    ours = simulate.simulate_all(
        [1], 2.0, 2.5, tmp_path / "ours", tiny_prepared, seed=3, target=theirs.best_true, baseline_runs=5, **options
    )[0]
    assert ours.hours_to_target is not None and theirs.hours_to_target is not None
    # Without noise the climb is the same, two baseline runs (of 305-500 s) later; it went on past that best.
    assert 2 * 305 <= (ours.hours_to_target - theirs.hours_to_target) * 3600 <= 2 * 500
    assert ours.best_true < theirs.best_true
    given = {"3": [{"hours_to_target": theirs.hours_to_target}]}
    summary = simulate.against_given({3: [ours]}, given)
    assert summary["later"] == 1 and summary["sooner"] == 0 and summary["not_reached"] == 0
    assert summary["time_to_given_best_over_theirs_median"] == ours.hours_to_target / theirs.hours_to_target
