"""Red team: how a run's evaluator ends, attacked from inside the experiment (train.py and the graph it hands over).

The loop reads an evaluator's exit code and result (loop/executor.py `outcome_of`): exit code 2 with no result is a
setup error of the loop's (the loop stops, and the experiment in flight is trained again at the next start); death by
a signal with no result is a run killed from outside (lost: tried once more, a fresh draw); a crash is the
experiment's. A train.py must not be able to choose either of the first two.

Three failed when written (the break is in each test's docstring, with its root cause and fix):
- the fork server's evaluator ended with 2, the setup error, on any exception nothing caught: a train.py that sent a
  frame its evaluator could not take (a number too large for a float, an integer of 5,000 digits, weights safetensors
  cannot read) stopped the loop, at every start again;
- the graph is run in the evaluator, and an integer division of the least int64 by -1 (`div`, rounding mode "trunc",
  on the operator list) kills it with SIGFPE: the run was "killed from outside" and tried again, after the train.py
  had seen its loss;
- the one-worker loop (`run`, `try`) recorded a lost run as the experiment's crash, where the README and the fork
  server's unseen ends promise it is tried once more.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from loop_support import BIGRAM_TRAIN_PY, FakeExecutor, ScriptedAgent, constant, make_loop, set_lr
from test_loop import score
from test_scheduler import late

from autoresearch.data.shards import Manifest
from autoresearch.evaluator import sandbox, zygote
from autoresearch.evaluator.fingerprint import fingerprint
from autoresearch.loop.engine import LoopError
from autoresearch.loop.executor import LocalExecutor, Outcome, RunSpec, outcome_of
from autoresearch.vocabulary import RunEnd, Status
from autoresearch.wire import Channel, ChannelClosed

STEP = "        run.step_done(loss)\n"
FINISH = "    run.finish()\n"
# A frame written by hand on the channel, as no harness would: `header` is its JSON text, in bytes.
RAW_FRAME = """\
        import struct
        from autoresearch.wire import Channel
        header = {header}
        Channel.from_env().sock.sendall(struct.pack(">I", len(header)) + header)
"""


def raw_step(loss: str) -> list[tuple[str, str]]:
    """A step frame whose loss is `loss` (Python that makes its JSON text, in bytes), after every honest step."""
    return [(STEP, STEP + RAW_FRAME.format(header=f'b\'{{"op": "step", "loss": \' + {loss} + b\'}}\''))]


BROKEN_FRAMES = {
    # Session.serve: math.isfinite(10**400) raises OverflowError
    "a loss too large for a float": raw_step("b'1' + b'0' * 400"),
    # Channel.receive: json.loads raises ValueError past 4,300 digits, which is no JSONDecodeError
    "an integer of 5,000 digits": raw_step("b'1' + b'0' * 5000"),
    # Channel.receive: RecursionError
    "arrays nested 100,000 deep": raw_step("b'[' * 100000 + b']' * 100000"),
    # Referee._result: float(10**400) for the peak memory it reports
    "a peak memory too large for a float": [
        (
            "from autoresearch import harness\n",
            "from autoresearch import harness, device\ndevice.peak_memory_mb = lambda *a: 10**400\n",
        )
    ],
    # Referee._result: the parameter count reads the weights with safetensors, which raises SafetensorError
    "weights safetensors cannot read": [(FINISH, "    run._exported.weights = lambda: bytes(8) + b'{}'\n" + FINISH)],
}
TRIED = ["a loss too large for a float", "an integer of 5,000 digits", "weights safetensors cannot read"]

# A model whose graph divides a buffer by -1, rounding towards zero: harmless while it trains (the buffer is 0), and
# fatal to the evaluator that scores it once the buffer holds the least int64 (SIGFPE). The train.py sets it after
# seeing its loss: here always.
FAULT_IN_GRAPH = [
    (
        "        self.table = nn.Embedding(vocab_size, vocab_size)\n",
        "        self.table = nn.Embedding(vocab_size, vocab_size)\n"
        "        self.register_buffer('draw', torch.zeros(1, dtype=torch.long))\n",
    ),
    (
        "        logits = self.table(idx)\n",
        "        logits = self.table(idx) + torch.div(self.draw, -1, rounding_mode='trunc').float() * 0\n",
    ),
    (FINISH, "    if loss.item() > 0:  # worse than hoped: another draw\n        model.draw.fill_(-2**63)\n" + FINISH),
]

confined = pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="bubblewrap cannot confine here")


def edited(replacements: list[tuple[str, str]]) -> str:
    source = BIGRAM_TRAIN_PY
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new, 1)
    return source


def runs(workspace, sources: list[str]) -> list[Outcome]:
    """Each of `sources` trained once, as the loop's executor trains its runs (each forked from its fork server: one
    server for them all, whose start costs as much as a run)."""
    manifest = Manifest.load(Path(workspace.apparatus.data_dir) / "manifest.json")
    executor = LocalExecutor(prewarm=False)
    try:
        return [
            executor.run(
                RunSpec(
                    workspace.root, workspace.state / "runs" / f"{n}-0", 60, fingerprint(workspace.apparatus, manifest),
                    code=source.encode(),
                )
            )
            for n, source in enumerate(sources, 2)
        ]  # fmt: skip
    finally:
        assert executor.fork_failure is None
        executor.close()


@pytest.mark.slow
@confined
def test_a_train_py_that_sends_what_its_evaluator_cannot_take_crashes_and_never_stops_the_loop(workspace):
    """BROKE, fixed: each of these ended the evaluator with an exception nothing caught, which the fork server's
    evaluator turned into exit code 2, the setup error: "the evaluator could not run: OverflowError: int too large
    to convert to float", the loop stopped (RunEnd.CHANGED), and the experiment, left in flight, did so again at
    every start. An evaluator ends with 1 on such an exception, as `python -m` does (a crash of the experiment's),
    and judges each of these as the experiment's doing, with a result (a loss it cannot read is one it does not show;
    weights it cannot read are an invalid result)."""
    for frame, outcome in zip(TRIED, runs(workspace, [edited(BROKEN_FRAMES[frame]) for frame in TRIED]), strict=True):
        assert outcome.status not in (RunEnd.CHANGED, RunEnd.LOST), (frame, outcome.status, outcome.reason)
        assert outcome.result is not None, (frame, outcome.reason)  # judged by the evaluator (a loss it only shows)


def test_what_a_frame_may_carry_that_python_will_not_read_closes_the_channel_and_numbers_are_taken_finite():
    from autoresearch.evaluator.session import finite

    ours, theirs = socket.socketpair()
    with ours, theirs:
        for header in (b'{"op": "step", "loss": 1' + b"0" * 5000 + b"}", b"[" * 100000 + b"]" * 100000):
            theirs.sendall(len(header).to_bytes(4, "big") + header)
            with pytest.raises(ChannelClosed, match="not JSON"):
                Channel(ours).receive()
    assert finite(10**400) is None and finite(float("nan")) is None and finite("1") is None and finite(None) is None
    assert finite(3) == 3.0 and finite(2.5) == 2.5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server is Linux's")
def test_a_forked_evaluator_that_raises_ends_as_python_would_not_with_the_setup_errors_code():
    """BROKE, fixed: zygote._evaluator began with `code = 2` and kept it when the evaluator raised, so any bug a
    train.py could reach in its evaluator stopped the loop as a setup error would."""

    def raises(argv):
        raise OverflowError("int too large to convert to float")

    here, there = socket.socketpair()
    stdin_r, stdin_w = os.pipe()
    out = os.open(os.devnull, os.O_WRONLY)
    pid = os.fork()
    if pid == 0:
        zygote._evaluator(there, raises, [], [stdin_r, out])
    for fd in (stdin_r, stdin_w, out):
        os.close(fd)
    here.close()
    there.close()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 1


@pytest.mark.slow
@confined
def test_a_graph_that_kills_its_evaluator_with_a_fault_is_a_crash_not_a_run_lost_and_drawn_again(workspace):
    """BROKE, fixed: "lost: the run was killed from outside (signal 8)". The handed-over graph runs in the evaluator;
    `div(least int64, -1, rounding_mode="trunc")` kills it with SIGFPE, with no result written, which the loop took for
    a kill from outside: the run was trained again (--workers), a second draw that a train.py could ask for after
    seeing its loss, by the value of a buffer. A fault signal (SIGSEGV, SIGFPE, SIGILL, SIGABRT, ...) is the
    evaluator's own doing, as it ran what the experiment handed over: a crash."""
    (outcome,) = runs(workspace, [edited(FAULT_IN_GRAPH)])
    assert outcome.status == RunEnd.CRASH, (outcome.status, outcome.reason)
    assert "SIGFPE" in outcome.reason


def test_an_evaluator_dead_of_a_fault_is_a_crash_and_one_killed_from_outside_is_lost():
    for fault in (signal.SIGSEGV, signal.SIGFPE, signal.SIGABRT, signal.SIGILL):
        assert outcome_of(-fault, None, "", "", 1.0, "f" * 16).status == RunEnd.CRASH
    for outside in (signal.SIGKILL, signal.SIGTERM, signal.SIGHUP):
        assert outcome_of(-outside, None, "", "", 1.0, "f" * 16).status == RunEnd.LOST


def test_the_one_worker_loop_tries_a_lost_run_once_more_and_twice_lost_is_a_crash(workspace):
    """BROKE, fixed: the one-worker loop (`run` without --workers, `try`) recorded a lost run as the experiment's crash
    at once: an evaluator whose end the dead fork server never told (loop/executor.py, UNSEEN) was "lost, and tried
    once more" by the README and the commit that made it so, and was not, in the loop most people run. It is tried
    once more there too, as the scheduler does; lost twice, it is a crash."""
    calls: dict[float, int] = {}
    unseen = "the fork server exited before its evaluator, whose end went unseen, and it wrote no result"

    def lost_once(source: str):
        lr = constant(source, "LR")
        calls[lr] = calls.get(lr, 0) + 1
        if (lr == 0.2 and calls[lr] == 1) or lr == 0.3:
            return Outcome(RunEnd.LOST, None, unseen, "", 1.0)
        return score(source)

    loop = make_loop(workspace, FakeExecutor(lost_once))
    loop.baseline()
    retried = loop.step(ScriptedAgent([set_lr(0.2)]))
    assert retried.status == Status.KEEP and calls[0.2] == 2 and len(retried.run_values) == 1, retried.reason
    lost = loop.step(ScriptedAgent([set_lr(0.3)]))
    assert lost.status == Status.CRASH and calls[0.3] == 2 and "twice" in lost.reason
    assert retried.attempts == lost.attempts == 0


def test_the_one_worker_loop_tries_a_late_baseline_run_once_more_and_late_twice_stops_with_the_reason(workspace):
    """A stall of the machine in an honest baseline's last step made its run late, and the loop stopped at its
    start, saying to fix train.py (a CI machine, under load). Such a run is trained once more; late again, the loop
    stops saying why. A change's late run is its crash (test_scheduler.py: it may not draw again)."""
    seeds: list[int] = []

    def late_at_first(source: str):
        seeds.append(constant(source, "SEED"))
        return late(source) if seeds[-1] == 42 else score(source)

    loop = make_loop(workspace, FakeExecutor(late_at_first), baseline_runs=2)
    with pytest.raises(LoopError, match=r"the baseline train.py failed: invalid result: trained 1.5s"):
        loop.baseline()
    assert seeds == [42, 42]  # its first run, twice; the second never started
