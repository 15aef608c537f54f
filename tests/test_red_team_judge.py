"""Red team: the statistics and bookkeeping of keeping (loop/judge.py, the reference a change is judged against, the
pooled noise), attacked by an agent that sees every verdict and by a train.py that reads its own SEED. The runs are
fake: a function of train.py's text and its SEED gives the val_bpb, so each test is a script of draws."""

from __future__ import annotations

from loop_support import BIGRAM_TRAIN_PY, FakeExecutor, ScriptedAgent, constant, make_loop

from autoresearch.vocabulary import Status

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
