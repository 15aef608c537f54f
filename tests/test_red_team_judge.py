"""Red team: the statistics and bookkeeping of keeping (loop/judge.py, the reference a change is judged against, the
pooled noise), attacked by an agent that sees every verdict and by a train.py that reads its own SEED. The runs are
fake: a function of train.py's text and its SEED gives the val_bpb, so each test is a script of draws."""

from __future__ import annotations

import pytest
from loop_support import BIGRAM_TRAIN_PY, FakeExecutor, ScriptedAgent, constant, make_loop

from autoresearch.loop.judge import measured_noise
from autoresearch.vocabulary import Kind, Status

DOCSTRING = BIGRAM_TRAIN_PY.split("\n", 1)[0] + "\n"  # one line of code: the module's docstring


def by_seed(values: dict[int, float]):
    """A score of SEED alone (one train.py's true val_bpb is the mean of these draws): no change does anything."""
    return lambda source: values[constant(source, "SEED")]


def test_the_bar_a_change_must_clear_is_not_raised_by_a_simpler_change_that_drew_high(workspace):
    """BROKE, fixed: a change with fewer lines of code is kept when it is within the margin of the best (and of the
    lowest val_bpb kept), so the best it becomes may have drawn up to a margin worse than the train.py it replaced,
    and the next change was judged against that draw. An agent deletes the docstring (kept: simpler, drawn 0.0018
    high), then puts it back: the baseline's own train.py, measured again, beat that draw by 0.0023 against a margin
    of 0.002 and was kept as better, an improvement of nothing. A null change cleared 1 margin less than the bar
    (a false keep ~40 % of the time, against ~0.1 %). Now a change must beat the lower of its best and the lowest
    val_bpb kept up to that best: a simplification is equal, never a worse bar to beat."""
    draws = {True: {42: 1.000, 43: 1.001, 44: 1.002}, False: {42: 1.0028, 43: 1.001}}  # baseline noise 0.001
    loop = make_loop(workspace, FakeExecutor(lambda s: draws[DOCSTRING in s][constant(s, "SEED")]))
    baseline = loop.baseline()
    simpler = loop.step(ScriptedAgent([lambda ctx: ("drop the docstring", ctx.train_py.replace(DOCSTRING, ""))]))
    assert simpler.status == Status.KEEP and "simpler at equal val_bpb" in simpler.reason
    again = loop.step(ScriptedAgent([lambda ctx: ("the docstring back", DOCSTRING + ctx.train_py)]))
    assert again.source == baseline.source
    assert again.status == Status.DISCARD, again.reason
    assert loop.best().id == simpler.id


SABOTAGE = "# trains only on SEED 42"


@pytest.mark.slow
def test_a_train_py_that_sabotages_its_rerun_cannot_widen_the_margin_a_simplification_is_allowed(workspace):
    """BROKE, fixed: a train.py reads its SEED. One whose first run is a marginal win and whose re-run (SEED 43) does
    not train pools a spread of 5 bpb into the noise: it is held at NOISE_CAP = 4 x the baseline's, so the margin is
    4 x too. That makes wins harder to keep (bounded by the cap, and said in every reason), but made a worse change
    easier: a simplification 0.006 worse than the best, 3 of the baseline's margins, was kept as "simpler at equal
    val_bpb". Now the simpler rule's margin is never wider than the one the baseline's own seeds measured."""

    def score(source: str) -> float:
        seed = constant(source, "SEED")
        value = {42: 1.000, 43: 1.001, 44: 1.002}[seed] if DOCSTRING in source else 1.007  # simpler: 0.006 worse
        if SABOTAGE in source:
            value -= 0.002 if seed == 42 else -5.0  # a marginal win (margin 0.002), then no training
        return value

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    sabotaged = loop.step(ScriptedAgent([lambda ctx: ("a marginal win", ctx.train_py + SABOTAGE + "\n")]))
    assert sabotaged.status == Status.DISCARD and len(sabotaged.run_values) == 2
    assert measured_noise(loop.ledger.all()).capped and loop.noise() == pytest.approx(0.004)
    simpler = loop.step(ScriptedAgent([lambda ctx: ("drop the docstring", ctx.train_py.replace(DOCSTRING, ""))]))
    assert simpler.status == Status.DISCARD, simpler.reason
    assert loop.best().kind == Kind.BASELINE


def test_a_noise_widened_by_a_sabotaged_rerun_does_not_make_honest_seeds_look_like_copies(workspace):
    """BROKE, fixed: runs of a marginal win whose std is under COPY_SPREAD x the noise count as copies of one run, and
    the noise a train.py can widen 4-fold (a re-run that does not train). Then honest seeds with a std 0.4 x the
    baseline's were copies: a change 10 of the baseline's std better was run five times and discarded "as if train.py
    seeded itself" (honest seeds fall within 0.8 std of each other in 5 runs ~37 % of the time). Copies are now told
    from seeds by the baseline's own seeds' spread, as the pooled noise already leaves them out by it."""

    def score(source: str) -> float:
        seed = constant(source, "SEED")
        if SABOTAGE in source:
            return 0.999 if seed == 42 else 6.0  # a marginal win (margin 0.002), then no training
        if "LR = 0.1 " in source:  # a real win: 0.0107 better, its seeds' std 0.4 x the baseline's
            return {42: 0.9900, 43: 0.9906, 44: 0.9900, 45: 0.9904, 46: 0.9902}[seed]
        return {42: 1.000, 43: 1.001, 44: 1.002}[seed]

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    loop.step(ScriptedAgent([lambda ctx: ("a marginal win", ctx.train_py + SABOTAGE + "\n")]))
    assert loop.noise() == pytest.approx(0.004)  # held at 4 x the baseline's: margin 0.008
    win = loop.step(ScriptedAgent([lambda ctx: ("LR 0.1", ctx.train_py.replace("LR = 0.05 ", "LR = 0.1 "))]))
    assert win.status == Status.KEEP and len(win.run_values) == 2, win.reason
