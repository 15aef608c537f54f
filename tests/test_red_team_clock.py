"""Red team: can a train.py train more than its CPU-clock budget, or look ahead past the causality probe?

The clock tests run an "evaluator" process as the real one runs unconfined (a child subreaper reading
CpuClock over its own process tree, the experiment under the SIGCHLD filter of evaluator/syscalls.py)
and an "experiment" under it that does a fixed amount of work in one of the ways a cheating train.py
could; the clock must count that work.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from autoresearch.evaluator import syscalls
from autoresearch.evaluator.score import Scorer, causality_violation

WORK = "n = 0\nfor i in range(3_000_000): n += i"

EVALUATOR = textwrap.dedent(
    """
    import ctypes, subprocess, sys
    import psutil
    from autoresearch.evaluator import syscalls
    from autoresearch.evaluator.clock import CpuClock
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, as confined.py does unconfined
    clock = CpuClock(cores=1)
    start = clock.read()
    PIPE = subprocess.PIPE
    exp = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1]], stdin=PIPE, stdout=PIPE, text=True, preexec_fn=syscalls.install
    )
    while (line := exp.stdout.readline().strip()) != "done":
        assert line == "ready", line
        start = clock.read()  # the clock starts here (pre-clock work is in its first reading)
        exp.stdin.write("go\\n")
        exp.stdin.flush()
    print(clock.read() - start, flush=True)
    for child in psutil.Process().children(recursive=True):
        child.kill()
    """
)

PRELUDE = f"import os, signal, subprocess, sys, threading, time\nimport psutil\nWORK = {WORK!r}\n"
GONE = "while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE: time.sleep(0.01)\n"
DONE = "print('done', flush=True); sys.stdin.read()\n"

EXPERIMENTS = {
    # A helper run and reaped the ordinary way: the baseline.
    "reaped_grandchild": "subprocess.run([sys.executable, '-c', WORK])\n",
    # Threads: their time is in the process's own.
    "threads": "ts = [threading.Thread(target=exec, args=(WORK,)) for _ in range(1)]\n"
    "[t.start() for t in ts]; [t.join() for t in ts]\n",
    # setsid + double fork: the worker is orphaned, reparented to the subreaper, still in its tree.
    "setsid_double_fork": "p = subprocess.Popen([sys.executable, '-c', 'import os, subprocess, sys; os.setsid(); "
    'pid = subprocess.Popen([sys.executable, "-c", sys.argv[1]]).pid; print(pid, flush=True)\', WORK], '
    "stdout=subprocess.PIPE, text=True)\npid = int(p.stdout.readline()); p.wait()\n" + GONE,
    # A worker that is still alive at the reading.
    # (It says when its work is done: a CPU time to wait for would never come where the work takes less.)
    "alive_worker": "p = subprocess.Popen([sys.executable, '-c', WORK + '\\nprint(1, flush=True); import time; "
    "time.sleep(30)'], stdout=subprocess.PIPE)\np.stdout.readline()\ntime.sleep(0.5)\n",
    # The parent dies without reaping its finished worker: the zombie goes to the subreaper.
    "parent_dies_unreaped": "p = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, time; "
    'w = subprocess.Popen([sys.executable, "-c", sys.argv[1]]); print(w.pid, flush=True); '
    'time.sleep(0.2); import psutil\\nwhile psutil.Process(w.pid).status() != "zombie": time.sleep(0.01)\', WORK], '
    "stdout=subprocess.PIPE, text=True)\npid = int(p.stdout.readline()); p.wait()\n",
}

# Ignoring SIGCHLD would have the kernel reap ended children, whose time then counts nowhere; the filter
# refuses it, and the cheats below go on as ordinary, counted work.
IGNORE_SIGCHLD = "try:\n    signal.signal(signal.SIGCHLD, signal.SIG_IGN)\nexcept PermissionError:\n    pass\n"

# Pre-pay, then vanish: CPU time burnt before the clock starts (it gains nothing there) is in the clock's
# first reading; were the burner autoreaped, the total would drop, and CpuClock's max() would turn the drop
# into as many free seconds of honest, ordinary, counted training.
PREPAID = (
    IGNORE_SIGCHLD
    + "b = subprocess.Popen([sys.executable, '-c', WORK + '\\n' + WORK + '\\nimport time; time.sleep(30)'])\n"
    "time.sleep(0.2)\nwhile psutil.Process(b.pid).status() != psutil.STATUS_SLEEPING: time.sleep(0.01)\n"
    "print('ready', flush=True); sys.stdin.readline()\n"
    "b.kill()\nb.wait()\n"
    "subprocess.run([sys.executable, '-c', WORK])\n"
)

# SIGCHLD ignored: the kernel would reap the worker itself, and add its time to no one's children's times.
AUTOREAPED = IGNORE_SIGCHLD + "pid = subprocess.Popen([sys.executable, '-c', WORK]).pid\n" + GONE


def clocked(experiment: str) -> float:
    """Training-clock seconds the evaluator counted for the experiment's work."""
    out = subprocess.run(
        [sys.executable, "-c", EVALUATOR, PRELUDE + experiment + DONE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return float(out.stdout.strip())


@pytest.fixture
def baseline() -> float:
    """The honest work's count, measured just before each test's: CPU time for the same work moved by 2 x over a run
    of the suite, as the other worker's load on the same cores came and went (a baseline of the module's start once
    failed two tests at 0.49 x)."""
    seconds = clocked(EXPERIMENTS["reaped_grandchild"])
    assert seconds > 0.1
    return seconds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper and /proc are Linux")
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_work_done_in_the_experiments_tree_is_counted(name: str, baseline: float) -> None:
    assert clocked(EXPERIMENTS[name]) > 0.5 * baseline


@pytest.mark.slow
@pytest.mark.skipif(syscalls.unavailable_reason() is not None, reason="needs libseccomp (Linux)")
def test_work_in_a_process_the_kernel_would_reap_is_counted(baseline: float) -> None:
    assert clocked(AUTOREAPED) > 0.5 * baseline


@pytest.mark.slow
@pytest.mark.skipif(syscalls.unavailable_reason() is not None, reason="needs libseccomp (Linux)")
def test_time_that_vanishes_from_the_tree_is_not_free_budget(baseline: float) -> None:
    assert clocked(PREPAID) > 0.5 * baseline


# Every way to stop the kernel from handing an ended child's time to a parent that counts it, in the
# experiment and in a process it starts: each must fail with EPERM, and SIGCHLD must keep its default action.
CHANGE_SIGCHLD = textwrap.dedent(
    """
    import ctypes, signal, subprocess, sys

    class Sigaction(ctypes.Structure):
        _fields_ = [("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong), ("restorer", ctypes.c_void_p),
                    ("mask", ctypes.c_ulong)]

    def nocldwait():  # SA_NOCLDWAIT, straight through the system call
        act = Sigaction(0, 0x00000002 | 0x04000000, 0, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(13, signal.SIGCHLD, ctypes.byref(act), None, 8) != 0:
            raise OSError(ctypes.get_errno(), "rt_sigaction")

    tries = {
        "ignore": lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),
        "handler": lambda: signal.signal(signal.SIGCHLD, lambda *a: None),
        "nocldwait": nocldwait,
    }
    for name, attempt in tries.items():
        try:
            attempt()
            print(name, "ALLOWED")
        except OSError as exc:
            print(name, "refused", exc.errno)
    print("action", signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL)
    if len(sys.argv) == 1:  # once more, in a process it starts
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "child"])
    """
)


@pytest.mark.skipif(syscalls.unavailable_reason() is not None, reason="needs libseccomp (Linux)")
def test_an_experiment_cannot_have_its_ended_children_reaped_by_the_kernel(tmp_path) -> None:
    script = tmp_path / "change_sigchld.py"
    script.write_text(CHANGE_SIGCHLD)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: (signal.signal(signal.SIGCHLD, signal.SIG_IGN), syscalls.install()),
    ).stdout.splitlines()
    assert out == 2 * ["ignore refused 1", "handler refused 1", "nocldwait refused 1", "action True"], out


# -- the causality probe ---------------------------------------------------------------------------------

CPU = torch.device("cpu")
VOCAB, SEQ = 64, 32


class FirstBatchAware:
    """Causal on the first batch it is shown, and on anything that resembles it (the probe once reused only
    that batch, whole or cut); on every other batch it copies its target from the next input. It keeps state
    from call to call, which Program.changed() sees; the probe, which now cuts every batch, sees it too."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.emb = torch.randn(VOCAB, 16, generator=gen)
        self.out = torch.randn(16, VOCAB, generator=gen)
        self.first: torch.Tensor | None = None

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb[idx]
        logits = (x.cumsum(1) / torch.arange(1, idx.shape[1] + 1).view(1, -1, 1)) @ self.out
        if self.first is None:
            self.first = idx.clone()
        if (idx == self.first).float().mean() > 0.25:
            return logits
        return logits + 20 * torch.nn.functional.one_hot(torch.roll(idx, -1, dims=1), VOCAB)


def test_a_stateful_model_that_looks_ahead_off_the_first_batch_is_caught_by_the_probe_too() -> None:
    from autoresearch.evaluator.score import score_rows

    rng = np.random.default_rng(0)
    rows = rng.integers(1, VOCAB, size=(24, SEQ + 1))
    rows[:, 0] = 0
    model = FirstBatchAware()
    scorer = Scorer(model, VOCAB, CPU)
    score = score_rows(scorer, rows, torch.ones(VOCAB, dtype=torch.int64), 8)
    first = score.per_token[:8].mean().item()
    assert score.nats / score.tokens < 0.5 * first  # it looked ahead on the other batches
    reason = causality_violation(scorer, rows, score.per_token, 8)  # as the state check (Program.changed) does
    assert reason is not None and "sees the future" in reason


class FirstBatchAwareThatCleansUp(FirstBatchAware):
    """As above, its state kept in one of its own weights (zero as handed over), and put back to zero when
    the first batch comes cut (like the first batch, but not the same: once the probe's last call), so that
    the weights after the evaluation equal those bound before it."""

    def __init__(self) -> None:
        super().__init__()
        self.state = torch.zeros(8, SEQ, dtype=torch.int64)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.state.any():
            self.state.copy_(idx)
        self.first = self.state
        same = (idx == self.state).float().mean().item()
        logits = super().__call__(idx)
        if 0.25 < same < 1.0:  # the cut batch, the probe's last call: leave no trace
            self.state.zero_()
        return logits


def test_a_model_that_keeps_state_in_a_weight_and_restores_it_is_caught_by_the_probe() -> None:
    from autoresearch.evaluator.score import score_rows

    rng = np.random.default_rng(0)
    rows = rng.integers(1, VOCAB, size=(24, SEQ + 1))
    rows[:, 0] = 0
    model = FirstBatchAwareThatCleansUp()
    scorer = Scorer(model, VOCAB, CPU)
    score = score_rows(scorer, rows, torch.ones(VOCAB, dtype=torch.int64), 8)
    assert score.nats / score.tokens < 0.5 * score.per_token[:8].mean().item()  # it looked ahead
    reason = causality_violation(scorer, rows, score.per_token, 8)  # every batch cut, not just the first
    assert reason is not None and "sees the future" in reason


class SparsePeek(torch.nn.Module):
    """Causal, but copies its target from the next input at about 1 position in 97 (where its two last
    tokens hash to 0): a cut at one position per row finds such a position in few rows."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, VOCAB)
        gate = ((idx * 31 + torch.roll(idx, 1, dims=1)) % 97 == 0).unsqueeze(-1)
        return logits + 30 * gate * torch.nn.functional.one_hot(torch.roll(idx, -1, dims=1), VOCAB)


@pytest.mark.slow  # ~1 s: the fast subset stays under a minute
def test_a_model_that_reads_its_target_at_a_few_positions_is_caught_by_the_probe() -> None:
    """BROKE, fixed: the probe cut only the evaluation's first batch, one position tested per row: a model that
    reads its target at a fraction f of positions passed with a chance of (1 - f) ** rows (78 % here, 72 %
    with the h100 preset's 64 rows at f = 0.5 %) and scored f of its loss better (2 % of val_bpb on the tiny
    data, where 16 rows were probed). Every row of the evaluation is cut now."""
    from autoresearch.evaluator.score import score_rows

    rng = np.random.default_rng(0)
    rows = rng.integers(1, VOCAB, size=(1024, SEQ + 1))
    rows[:, 0] = 0
    scorer = Scorer(SparsePeek(), VOCAB, CPU)
    score = score_rows(scorer, rows, torch.ones(VOCAB, dtype=torch.int64), 16)
    assert score.nats / score.tokens < 0.995 * np.log(VOCAB)  # it read its target somewhere
    reason = causality_violation(scorer, rows, score.per_token, 16)
    assert reason is not None and "sees the future" in reason  # passes (0.99 ** 1024): 3e-5


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_training_on_after_stop_while_padded_weights_come_in_is_late_whatever_their_size() -> None:
    """BROKE, fixed: the weights were allowed 0.5 s, one step and their size at 500 MB/s after `stop`, on no
    clock; a model padded with a buffer its graph barely reads (up to the 64 GiB taken) bought that much training
    after the clock stopped, handing over the buffer's zeros first while it trained and the trained weights last
    (measured: 2 GB of padding, 24 steps after `stop` beside 30 in a 1 s budget, valid). The hand-over is now on
    the training clock: from its start to the weights' arrival, the budget, the last step's grace and 0.5 s."""
    from autoresearch.evaluator.clock import WallClock
    from autoresearch.evaluator.session import Session, Timeline

    session = Session(None, None, {}, budget_seconds=300.0, clock=WallClock())
    steps = [i * 0.3 for i in range(1001)]  # wall clock (a GPU): steps of 0.3 s, the last at the budget
    session.timeline = Timeline(go=0.0, clock=0.0, stop=300.0, weights=303.0, trained=300.0, steps=steps)
    session.timeline.handed_over = 303.0  # 3 s after `stop`, on the clock as on the wall
    session.timeline.weights_data = bytearray(2 * 10**9)  # 2 GB (of untouched pages): 4 s "to hand over"
    why = session.late()
    assert why is not None and "weights came 303.0s after the clock started" in why, why
    session.timeline.handed_over = session.timeline.weights = 301.0  # a hand-over within the last step's grace
    assert session.late() is None


def test_step_reports_spaced_out_buy_no_grace_past_the_budget() -> None:
    """BROKE, fixed: the grace past the budget (for a last step that began before it) was two typical steps and
    1 s, the typical step being the median gap between the experiment's own `step` reports: a train.py that
    reported a step every 100 s of a 300 s budget could train (and was served rows) until 501 s. The step the
    grace allows for is at most 0.5 % of the budget now (1.5 s of 300), or 1 s."""
    from autoresearch.evaluator.clock import WallClock
    from autoresearch.evaluator.session import Session, Timeline

    session = Session(None, None, {}, budget_seconds=300.0, clock=WallClock())
    session.timeline = Timeline(go=0.0, clock=0.0, stop=450.0, weights=450.1, trained=450.0, handed_over=450.1)
    session.timeline.steps = [0.0, 100.0, 200.0, 300.0, 400.0]
    why = session.late()
    assert why is not None and "trained 450.0s, past the 300s budget" in why, why
    assert session.timeline.grace(300.0) == 1.5 * 1.5 + 0.25
