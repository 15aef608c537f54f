"""Red team: a protection the loop found working, lost for one run because something failed in that run's evaluator.

The loop decides once what holds on this machine (bubblewrap, the seccomp filter, the run's cgroup) and says so at
its start; each evaluator then made its run's protections for itself, and where one failed at that moment (a library
that could not be loaded, a cgroup that could not be made) it trained the run without it, saying nothing the loop
reads. Each test here makes that one protection fail in the evaluators alone, and runs a train.py that uses what is
then open, through the real loop (CPU, tiny preset, 1-second budget). A protection the loop found working is applied,
or the run is not trained and the loop stops saying why (no fault of the run's): never a run trained without it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from loop_support import evaluators_with, make_loop, one_edit, run_groups
from test_red_team import MEMORY_GROUPS, SPREAD_MEMORY, START, first_run_log
from test_red_team_fork import REACH_THE_ANCHOR, inside

from autoresearch.evaluator import memory, run_group, sandbox, syscalls, tasks
from autoresearch.evaluator.confined import FORK_ENV
from autoresearch.loop.executor import LocalExecutor
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.settings import LoopError
from autoresearch.vocabulary import Status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox, filter and cgroups are Linux's"),
    pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="bubblewrap cannot confine here"),
]


def stops_the_loop(ws, loop, description: str, code: str, match: str) -> str:
    """Step `loop` on train.py with `code` after harness.start(): it must stop with a LoopError matching `match`, its
    experiment still in flight with no run recorded (trained on the next start). What that experiment's runs printed."""
    try:
        with pytest.raises(LoopError, match=match):
            loop.step(one_edit(description, [(START, START + code)]))
    finally:
        loop.executor.close()
    (exp,) = [e for e in Ledger(ws.root).all() if e.description == description]
    assert exp.status == Status.RUNNING and exp.run_values == []
    return "".join(p.read_text() for p in (ws.state / "runs").glob(f"{exp.id}-*/log.txt"))


IGNORE_SIGCHLD = """\
    import signal
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        print("SIGCHLD IGNORED", flush=True)
    except PermissionError:
        print("SIGCHLD REFUSED", flush=True)
"""


@pytest.mark.skipif(syscalls.unavailable_reason() is not None, reason="needs libseccomp")
def test_an_evaluator_that_cannot_load_the_filter_trains_no_run_without_it(lab, tmp_path: Path) -> None:
    """BROKE: each evaluator asked for itself whether the seccomp filter can be made (libseccomp loaded through
    pyseccomp, imported afresh in every evaluator), and one that could not trained its run without it: SIGCHLD ignored
    (work in helpers the kernel reaps, which the CPU clock never counts), sched_setaffinity off its worker's CPUs,
    unshare/mount (run as root: the cgroup filesystem, out of its groups), the loop's keyrings. The loop never knew (on
    a GPU not even the run's log said so; the result has no field for it). The loop's word (evaluator/promises.py, set
    in evaluator_env where it loads the filter) is now taken: an evaluator that cannot load it stops the loop."""
    ws, _ = lab
    env = evaluators_with(tmp_path, "pyseccomp", "raise ImportError('libseccomp.so.2: cannot open shared object')\n")
    loop = make_loop(ws, LocalExecutor(prewarm=False, env=env), baseline_runs=2)
    printed = stops_the_loop(ws, loop, "ignore SIGCHLD", IGNORE_SIGCHLD, r"seccomp filter.*libseccomp\.so\.2")
    assert "SIGCHLD IGNORED" not in printed


# The run's own cgroup (its cap of tasks, its memory) not made: as a moment short of memory or of cgroup ids (v1 has
# 65,535 memory groups a machine) makes RunGroup.make fail. The evaluator's own share group (no "pids" asked) is made.
NO_RUN_GROUP = """\
from autoresearch.evaluator import run_group
_make = run_group.RunGroup.make.__func__

def make(cls, limits, holds=frozenset()):
    return None if "pids" in limits else _make(cls, limits, holds)

run_group.RunGroup.make = classmethod(make)
"""

FORK = """\
    import os
    for forked in range(120):
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "30"])
        print("FORKED", forked + 1, flush=True)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or tasks.by_limit() or "pids" not in run_group.limitable(tasks.limits(48)),
    reason="the cap of tasks is a pids cgroup as root, where one can be made",
)
def test_a_run_whose_cgroup_cannot_be_made_is_not_trained_uncapped(
    lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE: `run` checked once that a run's pids group can be made (no warning: runs are capped), but each run's
    evaluator made its group for itself (RunGroup.make) and, where that failed, trained the run without one: no cap of
    tasks (a fork bomb fills the machine's process table, other workers' honest runs crash), and without its memory
    group. 120 forks under a cap of 48 all went through, silently. The loop's word on the run's group
    (evaluator/promises.py, set in evaluator_env) is now taken: a group that cannot be made stops the loop."""
    ws, _ = lab
    monkeypatch.setenv(tasks.TASKS_ENV, "48")
    loop = make_loop(ws, LocalExecutor(prewarm=False, env=evaluators_with(tmp_path, "sitecustomize", NO_RUN_GROUP)))
    printed = stops_the_loop(ws, loop, "fork beyond the cap", FORK, r"cgroup.*pids")
    forked = [int(n) for n in re.findall(r"FORKED (\d+)", printed)]
    assert max(forked, default=0) < 48, forked
    assert all(pid != os.getpid() for pid, _ in run_groups("pids"))  # the loop's probe's


def test_an_honest_run_with_every_protection_still_trains(lab) -> None:
    """The other side: where everything can be made, the loop's word changes nothing."""
    ws, loop = lab
    exp = loop.step(one_edit("an honest change", [("LR = 0.05", "LR = 0.06")]))
    assert exp.status != Status.CRASH, exp.reason
    assert "SIGCHLD" not in first_run_log(ws, exp.id)


def test_a_run_whose_anchor_fails_for_a_moment_is_not_started_beside_bubblewraps_open_init(
    lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's anchor (bwrap --as-pid-1: the PID namespace's init, ours, not dumpable) failed once while bubblewrap
    otherwise works (a moment short of memory or processes): the evaluator fell back to starting the experiment under
    bubblewrap's own init, silently: it ptraced and opened /proc/1/mem of `bwrap` for writing (ANCHOR REACHED ['mem',
    'ptrace'] bwrap, the run valid), which for a loop not run as root is a process outside the run's RLIMIT_NPROC (the
    old anchor, so rewritten, forked 300 times under a cap of 48). That way is meant for a bubblewrap without
    --as-pid-1; where the loop's made anchors (evaluator/promises.py), a run's that fails now stops the loop."""
    ws, _ = lab
    wrapper = tmp_path / "bwrap"
    fails = tmp_path / "anchor-fails"  # once the loop's own checks are done: the runs' anchors fail
    wrapper.write_text(
        f'#!/bin/sh\nif [ -e {fails} ]; then for a; do [ "$a" = --as-pid-1 ] && exit 1; done; fi\n'
        f'exec {sandbox.bwrap()} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(sandbox, "bwrap", lambda: str(wrapper))
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)
    fails.touch()
    printed = stops_the_loop(ws, loop, "reach init", inside(REACH_THE_ANCHOR), r"cannot confine train\.py: .*anchor")
    assert "ANCHOR REACHED" not in printed


# Joining the run's sandbox refused in the evaluators alone, as a moment short of processes or memory would (EAGAIN or
# ENOMEM at setns or fork). The loop's own probe of it (evaluator/anchor_probe.py) runs in the loop's environment.
NO_JOIN = """\
from autoresearch.evaluator import joining

def join(pid):
    raise BlockingIOError(11, "Resource temporarily unavailable")

joining.join = join
"""


def test_a_run_that_cannot_join_its_sandbox_for_a_moment_is_not_started_beside_bubblewraps_open_init(
    lab, tmp_path: Path
) -> None:
    """The same hole one step later: the run's anchor made, its fork could not join it. The evaluator started the
    experiment as a new process under bubblewrap's own init, silently, and the run could trace that init (ANCHOR
    REACHED). The loop's probe now forks a process into a sandbox of ours, as each run is; where that worked, a run
    that cannot join stops the loop."""
    ws, _ = lab
    loop = make_loop(ws, LocalExecutor(prewarm=False, env=evaluators_with(tmp_path, "sitecustomize", NO_JOIN)))
    code = "    # not joined: not the anchor's test's train.py, still in flight\n" + inside(REACH_THE_ANCHOR)
    printed = stops_the_loop(ws, loop, "reach init, not joined", code, r"forked into its sandbox.*temporarily")
    assert "ANCHOR REACHED" not in printed


def test_a_run_whose_bubblewrap_fails_where_bubblewrap_now_fails_everywhere_stops_the_loop_not_its_crash(
    lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE: an experiment started as a new process (no anchors here, or AUTORESEARCH_FORK_SERVER=0) whose bubblewrap
    could not make its sandbox (namespaces used up, say) ended before train.py ran, and the run was recorded as the
    experiment's crash ("train.py ended (exit code 1) without handing a model over"). Where bubblewrap fails so now
    for any sandbox, the loop stops and says why; the experiment is trained on the next start."""
    ws, _ = lab
    failing = tmp_path / "bwrap"
    failing.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: No space left on device' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv(FORK_ENV, "0")
    monkeypatch.setattr(sandbox, "bwrap", lambda: str(failing))  # the evaluators' (the loop's was probed before)
    loop = make_loop(ws, LocalExecutor(prewarm=False))
    match = r"bwrap cannot create the sandbox here: bwrap: Creating new namespace failed"
    printed = stops_the_loop(ws, loop, "an honest run, no sandbox made", "    pass\n", match)
    assert "Creating new namespace failed" in printed


# The machine's memory unread in the evaluators alone, as a moment short of memory makes a read of /proc/meminfo fail.
NO_MEMINFO = """\
from autoresearch.evaluator import memory

memory.total = lambda: 0
"""


@pytest.mark.skipif(not MEMORY_GROUPS, reason="no run is given a memory group here (a loop run as root: CI)")
def test_a_run_whose_evaluator_cannot_read_the_machines_memory_still_holds_its_share(
    lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE: unset, AUTORESEARCH_RUN_MEMORY was each evaluator's to work out (its share of the machine's memory, as
    it read it then), and one that read none took a share of none: no memory group, which the loop's word on the
    run's group did not miss (it asked for no limit). The run held 1.2 GB spread over 8 processes beside a loop whose
    share was 640 MiB, and was judged as any other. The loop now tells its evaluators the share it found, once."""
    ws, _ = lab
    monkeypatch.delenv(memory.MEMORY_ENV, raising=False)
    monkeypatch.setattr(memory, "share", lambda workers, machine=None: 640 << 20)  # the loop's share, as it found it
    loop = make_loop(ws, LocalExecutor(prewarm=False, env=evaluators_with(tmp_path, "sitecustomize", NO_MEMINFO)))
    exp = loop.step(one_edit("hold memory, its share unread", [(START, START + SPREAD_MEMORY)]))
    assert exp.status == Status.CRASH and "its memory (at most 640 MiB)" in exp.reason, exp.reason


def test_a_run_started_as_a_new_process_is_not_started_beside_bubblewraps_open_init(
    lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE: with AUTORESEARCH_FORK_SERVER=0 every experiment was started as a new process under bubblewrap's own init,
    where the loop's runs are forked beside an init of ours: the run ptraced `bwrap` and opened its /proc/1/mem for
    writing (ANCHOR REACHED ['mem', 'ptrace']), which for a loop not run as root is a process outside the run's
    RLIMIT_NPROC, and nothing said so (the switch is said to start processes anew, no more). Where the loop's bubblewrap
    makes anchors (evaluator/promises.py), a run started so gets an init of ours too, as a forked one does."""
    ws, _ = lab
    monkeypatch.setenv(FORK_ENV, "0")
    loop = make_loop(ws, LocalExecutor(prewarm=False))
    code = "    # started anew: not the anchor's test's train.py, still in flight\n" + inside(REACH_THE_ANCHOR)
    exp = loop.step(one_edit("reach init, started anew", [(START, START + code)]))
    assert "ANCHOR REACHED []" in first_run_log(ws, exp.id), first_run_log(ws, exp.id)
    assert exp.status != Status.CRASH, exp.reason
