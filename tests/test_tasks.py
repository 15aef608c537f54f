"""A run's cap on tasks (evaluator/tasks.py): the setting, RLIMIT_NPROC in a user namespace, and the run's pids group.

A whole run that forks without end is test_red_team.py's `test_a_train_py_that_forks_without_end_...`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoresearch.agents import turn_cgroups
from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import memory, promises, referee, run_group, run_user, sandbox, tasks
from autoresearch.evaluator.run_group import RunGroup
from autoresearch.loop.executor import SETUP_FAILED, setup_error

# Forks until refused (40 at most), kills what it started, tries to raise its limit again: "FORKED RAISED-OR-KEPT".
# Each child a task as a fork's is, spawned (vfork, exec): not a copy of a process that imported torch.
FORKS = """\
import os, resource
children = []
try:
    while len(children) < 40:
        children.append(os.posix_spawn("/bin/sleep", ["sleep", "30"], {}))
except OSError:
    pass
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (1000, 1000))
    raised = "raised"
except (OSError, ValueError):
    raised = "kept"
print(len(children), raised)
"""
# The cap as a run (harness/boot.py) or an agent's turn (agents/fence.py) of a loop not run as root gets it: as nobody
# where this is root (root is not bound by RLIMIT_NPROC), in a user namespace of its own ("own") or the machine's.
# Imported first (nobody may not read this Python), then in a fork: a process of one thread, as a new user namespace
# needs.
CAPPED_FORKS = """\
import ctypes, os, resource, sys, time
from autoresearch.agents.fence import restrict
if sys.argv[2] == "run":  # the harness's imports torch: a turn's needs none
    from autoresearch.harness.boot import cap_tasks
libc = ctypes.CDLL(None, use_errno=True)
if os.fork():
    sys.exit(os.waitstatus_to_exitcode(os.wait()[1]))
if os.getuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, which the change of user cleared: else /proc/self is root's
if sys.argv[1] == "own":
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        sys.exit("no user namespace: " + os.strerror(ctypes.get_errno()))
    with open("/proc/self/uid_map", "w") as mapping:
        mapping.write(f"{os.getuid()} {os.getuid()} 1")
if sys.argv[2] == "run":
    cap_tasks(16)  # as the harness does on "go"
else:
    restrict(None, None, 16)  # as the agent's fence does
"""


def test_the_cap_is_a_number_of_tasks_or_0_for_none() -> None:
    assert tasks.run_tasks({}) == tasks.DEFAULT_TASKS
    assert tasks.run_tasks({tasks.TASKS_ENV: " 8192 "}) == 8192
    assert tasks.run_tasks({tasks.TASKS_ENV: "0"}) == 0
    with pytest.raises(AutoresearchError, match="AUTORESEARCH_TASKS takes a number") as refused:
        tasks.run_tasks({tasks.TASKS_ENV: "lots"})
    assert "0 for no cap" in refused.value.hint
    for beyond in ("²", "-1", str(tasks.MOST_TASKS + 1)):  # a pids cgroup takes no more than the kernel's most
        with pytest.raises(AutoresearchError, match="up to 4194304"):
            tasks.run_tasks({tasks.TASKS_ENV: beyond})
    assert tasks.limits(0) == {} and RunGroup.make(tasks.limits(0)) is None


@pytest.mark.slow  # over a second: the fast subset stays under a minute
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NPROC per user namespace is Linux's")
@pytest.mark.parametrize("who", ["run", "agent"])
def test_not_root_a_run_or_an_agents_turn_in_its_own_user_namespace_gets_the_cap_and_cannot_raise_it(who) -> None:
    def forks(namespace: str) -> list[str]:
        script = textwrap.dedent(CAPPED_FORKS) + textwrap.dedent(FORKS)
        done = subprocess.run([sys.executable, "-c", script, namespace, who], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    forked, raised = forks("own")
    assert 0 < int(forked) < 16 and raised == "kept"
    # In the machine's own user namespace the kernel would count every process of the user: not set there.
    assert forks("machine")[0] == "40"


def test_a_loop_not_run_as_root_shares_what_your_limit_leaves_between_its_runs_its_turn_and_the_rest() -> None:
    # RHEL's `ulimit -u` of 4096, 300 tasks of yours already: one worker's run, the turn and the rest get a third.
    assert tasks.share(1, 4096, 300) == (4096 - 300) // 3 == 1265
    assert tasks.share(8, 4096, 300) == 379
    assert tasks.share(8, 1024, 500) == tasks.LEAST_TASKS  # too little left: an honest run still gets what it needs
    assert tasks.shares(1, {tasks.TASKS_ENV: "8192"}) == {}  # set: each run gets what you set
    if os.getuid() == 0:  # RLIMIT_NPROC binds no run of a root loop as the loop's user: nothing to share
        assert tasks.shares(1, {}) == {}


@pytest.mark.skipif(os.getuid() != 0, reason="counts the tasks of a user made for the test")
def test_a_users_tasks_are_its_processes_and_their_threads() -> None:
    uid = 3_000_000_000 + os.getpid()
    script = textwrap.dedent(f"""\
        import os, sys, threading
        os.setgroups([]); os.setgid({uid}); os.setuid({uid})
        held = threading.Event()
        for _ in range(4):
            threading.Thread(target=held.wait).start()
        print("ready", flush=True)
        sys.stdin.readline()
        held.set()
        """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        assert tasks.user_tasks(uid) == 5
    finally:
        holder.communicate("\n", timeout=30)
    assert tasks.user_tasks(uid) == 0


# A loop not run as root under a `ulimit -u` of 800 (soft, the hard limit kept above it, as RHEL's 4096): its run
# (or agent's turn) is capped in its own user namespace at the cap given ("fitted": the loop's share; else the default),
# forks all it may and holds it; then the loop forks, as it does to start git or an evaluator: "CAP FORKED LOOP".
# Imported as root first (the test's uid may not read this Python), then as a uid of the test's own.
SHARED_LIMIT = """\
import ctypes, os, resource, signal, sys, time
import psutil
from autoresearch.agents.fence import restrict
from autoresearch.evaluator import tasks
if sys.argv[2] == "run":  # the harness's imports torch: a turn's needs none
    from autoresearch.harness.boot import cap_tasks
libc = ctypes.CDLL(None, use_errno=True)
uid, who, fitted = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "fitted"
resource.setrlimit(resource.RLIMIT_NPROC, (800, resource.getrlimit(resource.RLIMIT_NPROC)[1]))
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, which the change of user cleared
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the run's children are reaped here, and the user's count back
cap = tasks.run_tasks({**os.environ, **tasks.shares(1)}) if fitted else tasks.DEFAULT_TASKS
told, tell = os.pipe()
run = os.fork()
if run == 0:
    os.setpgid(0, 0)  # the loop kills it, and all it started, as one group
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        os._exit(3)
    with open("/proc/self/uid_map", "w") as mapping:
        mapping.write(f"{uid} {uid} 1")
    cap_tasks(cap) if who == "run" else restrict(None, None, cap)
    forked = 0
    try:  # each a task, as a fork is; spawned (vfork, exec), not a copy of this process and the torch it imported
        while forked < 5000:
            os.posix_spawn("/bin/sleep", ["sleep", "60"], {})
            forked += 1
    except OSError:
        pass
    os.write(tell, str(forked).encode())
    time.sleep(60)
    os._exit(0)
forked = os.read(told, 32).decode()
try:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    loop = "forked"
except OSError:
    loop = "refused"
os.killpg(run, signal.SIGKILL)
try:
    while True:
        os.wait()
except ChildProcessError:
    print(cap, forked, loop)
"""


@pytest.mark.slow  # ~1,000 processes forked
@pytest.mark.skipif(os.getuid() != 0 or not tasks.by_limit(own_user=True), reason="a loop not run as root, as a user "
                    "made for the test; RLIMIT_NPROC per user namespace (Linux 5.14)")  # fmt: skip
@pytest.mark.parametrize("who", ["run", "agent"])
def test_a_run_that_forks_without_end_leaves_a_loop_not_run_as_root_its_share_of_your_limit(who) -> None:
    """RLIMIT_NPROC in a user namespace counts the namespace's tasks, and every level above it counts them too, up to
    the limit of whoever made the namespace: a run at the default cap of 4096 under a user's limit of 4096 (RHEL's) took
    all of the user's, and the loop could start no git, no evaluator (its fork server died of it), and another worker's
    run no thread. BROKE, fixed: a loop not run as root gives its runs and its agent's turn a share of what the limit
    leaves (tasks.shares)."""
    uid = 3_000_000_000 + os.getpid()

    def forks(cap: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", SHARED_LIMIT, str(uid), who, cap], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    cap, forked, loop = forks("default")  # as before: the run takes what is left of the user's 800
    assert (cap, loop) == (str(tasks.DEFAULT_TASKS), "refused") and 700 < int(forked) < 800
    cap, forked, loop = forks("fitted")
    # A third of what is left: this process's own threads count too (more of them on a 16-core GPU host than here)
    assert tasks.LEAST_TASKS <= int(cap) <= (800 - 1) // 3 and 0 < int(forked) < int(cap) and loop == "forked"
    assert tasks.user_tasks(uid) == 0  # nothing of it left


GROUPS = RunGroup.make(tasks.limits(tasks.DEFAULT_TASKS))
if GROUPS is not None:
    GROUPS.remove()


@pytest.mark.skipif(GROUPS is None, reason="no pids cgroup can be made below this process's (root, cgroup v1: CI)")
def test_a_runs_group_caps_what_it_starts_and_one_its_killed_evaluator_left_is_swept() -> None:
    # A process in a group of 12 forks until refused; its evaluator is then "killed": the group stays behind.
    ready_r, ready_w = os.pipe()
    left = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.read(int(sys.argv[1]), 1)", str(ready_r)], pass_fds=[ready_r]
    )
    os.close(ready_r)
    (mine,) = GROUPS.folders
    folder = mine.with_name(mine.name.replace(str(os.getpid()), str(left.pid), 1))  # beside the own, on v2
    folder.mkdir()
    (folder / "pids.max").write_text("12")
    group = RunGroup({folder: GROUPS.folders[mine]}, frozenset({"pids"}))
    forks = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORKS)], capture_output=True, text=True, timeout=60, check=True,
        preexec_fn=group.enter,
    )  # fmt: skip
    assert 0 < int(forks.stdout.split()[0]) < 12 and tasks.refused(group), forks.stdout
    os.close(ready_w)
    left.wait(timeout=30)
    assert folder.is_dir()
    made = RunGroup.make(tasks.limits(tasks.DEFAULT_TASKS))  # the next run's evaluator sweeps it
    try:
        assert not folder.exists() and made is not None and not tasks.refused(made)
        (made_folder,) = made.folders
        made_folder.rmdir()
        made_folder.mkdir()  # as an earlier process of this pid may have left it: made again all the same
        again = RunGroup.make(tasks.limits(12))
        assert again is not None and (made_folder / "pids.max").read_text().strip() == "12"
    finally:
        made.remove()
        group.remove(wait=0)


@pytest.mark.parametrize(
    ("v1", "handed", "promised"), [(True, "", {"pids"}), (False, "memory pids", {"pids"}), (False, "memory", set())]
)
def test_a_cap_is_promised_to_every_run_only_where_a_runs_group_can_have_it_inside_its_evaluators(
    monkeypatch: pytest.MonkeyPatch, tmp_path, v1: bool, handed: str, promised: set[str]
) -> None:
    """A run's group is made inside its evaluator's, which holds the evaluator. cgroup v2 hands no controller down to
    a group that holds a process, so there the evaluator's is entered through a leaf inside it, and the run's group
    has what the evaluator's hands down to the groups in it: only that is promised (a cap the loop could have in its
    own group promised every run one no evaluator could give, and every run would have stopped the loop). v1 gives
    every group all."""
    folder = tmp_path / "autoresearch-run-1"
    (folder / run_group.LEAF).mkdir(parents=True)
    (folder / "cgroup.subtree_control").write_text(handed)
    made = RunGroup({folder: v1}, frozenset({"pids"}), entries={} if v1 else {folder: folder / run_group.LEAF})
    asked = []
    monkeypatch.setattr(RunGroup, "make", classmethod(lambda cls, limits, **how: asked.append(how) or made))
    monkeypatch.setattr(RunGroup, "remove", lambda self, wait=0: None)
    monkeypatch.setattr(run_group, "_limitable", {})
    monkeypatch.setenv(run_user.RUN_USER_ENV, "root")  # runs of a root loop not made `nobody`: tests/test_run_user.py
    assert run_group.limitable(tasks.limits(48)) == promised
    assert asked == [{"holds": {"pids"}, "beside": True}]  # made to hold a run's group, as an evaluator's is
    assert sandbox.runs_capped(48) is bool(promised)  # `run` warns where runs are not capped (as root, here)


def v2_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[tuple[Path, Path]]]:
    """A folder tree standing for cgroup v2 as the lent GPU machines have it: the loop in /process_api/808e, which
    holds it and so hands nothing down, below a parent that hands memory and pids down (the lent H100's, memory
    alone). (The top, and [(this process's cgroup, the top)], which tests may change.)"""
    top = tmp_path / "cgroup"
    machine, loop = top / "process_api", top / "process_api" / "808e"
    loop.mkdir(parents=True)
    (top / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (machine / "cgroup.subtree_control").write_text("memory pids\n")
    (loop / "cgroup.subtree_control").write_text("\n")
    own = [(loop, top)]
    monkeypatch.setattr(run_group.cgroups, "own_folders", lambda controller: own)
    monkeypatch.setattr(run_group.cgroups, "own_every_folder", lambda: [("", own[0][0])])
    return top, own


def test_on_cgroup_v2_a_loop_run_as_root_makes_its_runs_groups_beside_its_own_with_the_runs_inside_the_evaluators(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """cgroup v2 hands controllers down only to the groups of one that holds no process, and the loop's own holds the
    loop: a loop run as root in a systemd session, or in a GPU machine's container (the lent ones' /process_api/<id>),
    could make no group below it, and its runs had neither their cap of tasks nor their share of memory (BROKE, fixed).
    A group is now made beside the loop's cgroup, below its parent, where that hands the controllers down; the
    evaluator's holds a leaf it enters and the run's group beside that leaf. A folder tree stands for the kernel's."""
    top, own = v2_machine(tmp_path, monkeypatch)
    machine, loop = top / "process_api", top / "process_api" / "808e"
    left = machine / f"{run_group.PREFIX}99999999-808e"  # an evaluator killed before it removed its group: swept
    others = [machine / f"{run_group.PREFIX}99999999-4f1c", machine / f"{run_group.PREFIX}99999999"]  # not ours
    for folder in (left, *others, machine / "4f1c"):  # 4f1c: the other loop's cgroup, which it is in
        folder.mkdir()
    share, pid = memory.limits(1 << 30), os.getpid()
    assert RunGroup.make(share) is None  # beside only where the loop's probe made such a group and promised it
    monkeypatch.setenv(promises.ENV, "memory,pids")

    monkeypatch.setenv(memory.MEMORY_ENV, "1G")
    monkeypatch.setenv(tasks.TASKS_ENV, "48")
    held = referee._hold_the_share()  # the evaluator's, which it enters
    evaluators = machine / f"{run_group.PREFIX}{pid}-808e"
    assert held is not None and held.folders == {evaluators: False} and held.limited == {"memory"}
    assert (evaluators / "memory.max").read_text() == str(1 << 30) and (evaluators / run_group.LEAF).is_dir()
    assert (evaluators / "memory.oom.group").read_text() == "0"  # an OOM kill there takes the run, not the evaluator
    assert not left.exists() and all(folder.is_dir() for folder in others)
    assert (evaluators / run_group.LEAF / "cgroup.procs").read_text() == str(pid)  # the group itself holds none
    assert run_group.group_of(pid).folders.keys() >= {evaluators}  # as the loop finds it, to read and remove it

    (evaluators / "cgroup.subtree_control").write_text("memory pids\n")  # as the kernel shows what `make` wrote
    own[0] = (evaluators / run_group.LEAF, top)  # the evaluator, in its leaf, makes the run's
    runs = RunGroup.make({**tasks.limits(48), **share})
    assert runs is not None and runs.limited == {"pids", "memory"}
    assert runs.folders == {evaluators / f"{run_group.PREFIX}{pid}-{run_group.LEAF}": False}
    assert (evaluators / f"{run_group.PREFIX}{pid}-{run_group.LEAF}" / "pids.max").read_text() == "48"

    monkeypatch.setattr(run_group, "REMOVE_WAIT_S", 0)
    held.leave()  # an evaluator run by hand goes back where it came from
    assert (loop / "cgroup.procs").read_text() == str(pid)

    own[0] = (top, top)  # a container's own cgroup, the top of what it sees, which holds its processes
    (top / "cgroup.subtree_control").write_text("\n")
    assert RunGroup.make(share, holds=frozenset({"memory"})) is None


def test_on_cgroup_v2_a_loop_run_as_root_gives_its_agents_turns_their_caps_beside_its_own_cgroup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A loop run as root starts each shell agent's turn in a group of its own inside an outer one: the outer caps the
    turns' tasks together, the turn's its memory (agents/turn_cgroups.py). On cgroup v2 both lay below the loop's own
    cgroup, which holds the loop and so hands nothing down: the lent GPU machines' turns had neither cap (BROKE,
    fixed). The outer is now made beside the loop's cgroup, as a run's group is, unless that cgroup limits what it
    holds (a container's), and hands the controllers down to the turns' groups. A fake tree."""
    top, _ = v2_machine(tmp_path, monkeypatch)
    machine, loop, pid = top / "process_api", top / "process_api" / "808e", os.getpid()
    monkeypatch.setattr(turn_cgroups.atexit, "register", lambda *args: None)  # no removal of a fake tree at exit
    left = machine / f"{turn_cgroups.PREFIX}99999999-all-808e"  # a killed loop's, beside this one's: swept
    theirs = [machine / f"{turn_cgroups.PREFIX}99999999-all-4f1c", machine / f"{turn_cgroups.PREFIX}99999999-0-x-808e"]
    for folder in (left, *theirs, machine / "4f1c", machine / "x-808e"):  # another loop's, beside its cgroup 4f1c
        folder.mkdir()  # or its cgroup x-808e (which it is in): left
    real_mkdir = Path.mkdir

    def mkdir(path: Path, *args, **kwargs) -> None:  # the kernel's files, where the outer is given the controllers
        real_mkdir(path, *args, **kwargs)
        if path.parent.name.startswith(turn_cgroups.PREFIX):
            (path / "memory.max").write_text("max\n")
        elif path.name.startswith(turn_cgroups.PREFIX):
            (path / "pids.max").write_text("max\n")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    (outer,) = turn_cgroups.turn_groups.__wrapped__("0-1")
    assert outer == machine / f"{turn_cgroups.PREFIX}{pid}-0.1-808e"
    assert not left.exists() and all(folder.is_dir() for folder in theirs)
    turn_cgroups.enter((outer,), 64, 1 << 30)  # as a turn's first process does, before it runs anything
    turn = outer / f"{turn_cgroups.TURN}{pid}"
    assert (outer / "pids.max").read_text() == "64" and (turn / "memory.max").read_text() == str(1 << 30)
    assert (turn / "cgroup.procs").read_text() == str(pid)

    (loop / "memory.max").write_text("17179869184\n")  # a container's limit: no group made out of it
    (below,) = turn_cgroups.turn_groups.__wrapped__("")
    assert below == loop / f"{turn_cgroups.PREFIX}{pid}-all"


def test_a_group_no_process_can_be_put_in_is_promised_to_no_run_and_an_evaluator_that_cannot_enter_stops_the_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where a group can be made but a process cannot be moved into it (a kernel's or a container's rule), the loop
    promises no run a cap, and `run` warns; an evaluator that cannot enter its own stops the loop, saying why, rather
    than crash every run (the experiment is trained on the next start)."""
    top, _ = v2_machine(tmp_path, monkeypatch)
    entry = top / "process_api" / f"{run_group.PREFIX}{os.getpid()}-808e" / run_group.LEAF / "cgroup.procs"
    real_mkdir = Path.mkdir

    def mkdir(path: Path, *args, **kwargs) -> None:  # the leaf comes with a cgroup.procs that cannot be written
        real_mkdir(path, *args, **kwargs)
        if path.name == run_group.LEAF:
            real_mkdir(path / "cgroup.procs")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(run_group, "_limitable", {})
    monkeypatch.setattr(run_group, "REMOVE_WAIT_S", 0)
    assert run_group.limitable({**tasks.limits(48), **memory.limits(1 << 30)}) == frozenset()
    shutil.rmtree(entry.parent.parent)  # the kernel's would have gone with `remove`; the fake's files stay
    monkeypatch.setenv(memory.MEMORY_ENV, "1G")
    monkeypatch.setenv(promises.ENV, "memory")  # as a loop whose probe could enter its group says
    assert referee.main(["--train-py", str(tmp_path / "train.py")]) == SETUP_FAILED
    error, hint = setup_error(capsys.readouterr().err)
    assert "cannot enter this run's memory group" in error and f"{memory.MEMORY_ENV}=0" in hint


def test_a_bubblewrap_that_makes_no_user_namespace_caps_no_run_by_rlimit_and_run_is_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A setuid bubblewrap makes no user namespace where unprivileged ones are disabled: its runs are in the machine's,
    where the harness sets no RLIMIT_NPROC (it would count every process of yours), and `run` said they were capped
    (BROKE, fixed: it asked only whether runs were confined)."""
    flat = tmp_path / "bwrap"  # a sandbox in the machine's user namespace: what it runs sees the machine's map
    flat.write_text("#!/bin/sh\nexec cat /proc/self/uid_map\n")
    flat.chmod(0o755)
    monkeypatch.setattr(tasks, "by_limit", lambda: True)  # a loop not run as root, on Linux 5.14 or later
    monkeypatch.setattr(run_user, "wanted", lambda: False)  # which makes no run `nobody`
    monkeypatch.setattr(run_group, "limitable", lambda limits: set())  # and no pids group to be made

    def probe_again() -> None:
        for cached in (sandbox.bwrap, sandbox.unavailable_reason, sandbox.own_user_namespace):
            cached.cache_clear()

    probe_again()
    try:
        assert sandbox.own_user_namespace() and sandbox.runs_capped(48)  # this machine's bubblewrap makes one
        probe_again()
        monkeypatch.setenv(sandbox.BWRAP_ENV, str(flat))
        assert sandbox.unavailable_reason() is None  # confined, as far as the probe can tell
        assert not sandbox.own_user_namespace() and not sandbox.runs_capped(48)
        assert sandbox.runs_capped(0)  # no cap wanted: none missing
    finally:
        probe_again()
