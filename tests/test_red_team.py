"""Red team: train.py files written to cheat, run through the real loop (CPU, tiny preset, 1-second budgets).

Each knows every path an attacker could want (the test writes them in): the workspace's records, git's
hooks, the installed package, the validation shard, the next result file. Confined, none of it is
reachable; a patched scorer or loss function patches only the experiment's own process; a process left
behind dies with the run; a model that behaves differently when it is evaluated is caught, because the
evaluator runs the graph it exported, not its code. Where confinement is switched off, what a run
changed is found after it, put back, and the run is a crash that says what it touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from loop_support import groups_left, make_loop, make_workspace, one_edit

import autoresearch.loop.judge as judge_module
from autoresearch import switches
from autoresearch.data.shards import Manifest
from autoresearch.data.sources import VAL
from autoresearch.evaluator import compile_cache, memory, run_group, run_user, sandbox, tasks
from autoresearch.loop.executor import LocalExecutor
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.settings import LoopError
from autoresearch.loop.watch import package_digest
from autoresearch.vocabulary import Status

pytestmark = pytest.mark.slow
START = "    run = harness.start()\n"
# Ends a run whose probe is all a test asks of it: no training and no evaluation to wait for, and never kept. (Its
# last line is the crash's reason, in the log again: not one a test counts.)
PROBED = "    print('probed', flush=True)\n    raise SystemExit(3)\n"


def secrets_of(ws, loop, tiny_prepared: Path) -> dict[str, list[str]]:
    """What a cheating train.py would want to write and to read (not the package: see the confined test)."""
    val = Manifest.load(tiny_prepared / "manifest.json").split(VAL)[0].name
    next_run = ws.state / "runs" / f"{loop.ledger.next_id()}-0"
    writes = [
        ws.root / ".git" / "hooks" / "post-checkout",
        ws.root / "results.tsv",
        ws.state / "ledger.sqlite",
        ws.root / "program.md",
        ws.root / "autoresearch.json",
        next_run / "result.json",
    ]
    reads = [tiny_prepared / f"{val}.bin", ws.root / "autoresearch.json", ws.state / "ledger.sqlite"]
    return {"writes": [str(p) for p in writes], "reads": [str(p) for p in reads]}


def protected(ws, tiny_prepared: Path) -> dict[str, bytes | None]:
    """Everything outside train.py that must come out of a run unchanged, with its bytes, and the loop's records
    (results.tsv and the ledger gain the experiment's row, and nothing else)."""
    rows = ws.git.root.joinpath("results.tsv").read_text().splitlines()
    assert not [r for r in rows if "pwned" in r]
    assert len(rows) == 1 + len([e for e in Ledger(ws.root).all() if e.status != Status.RUNNING])
    paths = [
        ws.root / "program.md",
        ws.root / "autoresearch.json",
        ws.root / ".git" / "config",
        ws.root / ".git" / "hooks" / "post-checkout",
        Path(judge_module.__file__),
        *sorted(tiny_prepared.glob("*.bin")),
    ]
    return {str(p): p.read_bytes() if p.exists() else None for p in paths}


def own_refs(ws) -> dict[str, str]:
    """The branch and every other ref, but the discarded experiments' (the loop adds one per discard)."""
    return {k: v for k, v in ws.git.refs().items() if "discarded" not in k}


def run_log(ws, exp_id: int) -> str:
    return "".join(p.read_text() for p in sorted((ws.state / "runs").glob(f"{exp_id}-*/log.txt")))


def first_run_log(ws, exp_id: int) -> str:
    """The first run's log alone: what to count in (an honest-looking run can be a marginal win, run again)."""
    return (ws.state / "runs" / f"{exp_id}-0" / "log.txt").read_text()


REACH = """\
    import os
    import sqlite3
    for target in {writes!r}:
        try:
            if target.endswith(".sqlite"):  # rewrite history: every experiment kept, at 0.01 bpb
                with sqlite3.connect("file:" + target + "?mode=rw", uri=True) as db:
                    db.execute("UPDATE experiments SET status = 'keep', val_bpb = 0.01")
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "ab") as f:
                    f.write(b"pwned\\n")
            print("REACHED write", target)
        except (OSError, sqlite3.Error) as exc:
            print("blocked write", target, type(exc).__name__)
    for target in {reads!r}:
        try:
            open(target, "rb").read(16)
            print("REACHED read", target)
        except OSError as exc:
            print("blocked read", target, type(exc).__name__)
    leaked = sorted(k for k in os.environ if k.startswith("AUTORESEARCH_") and k != "AUTORESEARCH_CHANNEL")
    print("REACHED env" if leaked else "blocked env", leaked)
    import torch.nn.functional as F2
    import autoresearch.evaluator.score as scoring
    scoring.score_rows = lambda *a, **k: 0.0  # patches this process's copy only
    F2.cross_entropy = lambda *a, **k: torch.zeros((), requires_grad=True)  # every loss 0, here
"""


def test_a_train_py_that_reaches_for_records_data_and_secrets_gets_nothing(lab, tiny_prepared: Path) -> None:
    ws, loop = lab
    targets = secrets_of(ws, loop, tiny_prepared)
    targets["writes"].append(judge_module.__file__)  # the installed package: read-only to a confined run
    before, refs = protected(ws, tiny_prepared), own_refs(ws)
    pre_clock = "    batches = run.train_batches(BATCH)\n    x0, _ = next(batches)\n"
    pre_clock += "    print('pre-clock rows starting with BOS:', (x0[:, 0] == 0).float().mean().item())\n"
    cheat = one_edit(
        "reach", [(START, START + REACH.format(**targets)), ("    batches = run.train_batches(BATCH)\n", pre_clock)]
    )
    exp = loop.step(cheat)
    log, first = run_log(ws, exp.id), first_run_log(ws, exp.id)
    assert "REACHED" not in log and first.count("blocked write") == 7 and first.count("blocked read") == 3, log
    assert "blocked env []" in log
    assert float(log.split("pre-clock rows starting with BOS:")[1].split()[0]) < 0.5  # random tokens, not rows
    assert exp.status != Status.KEEP and exp.val_bpb > loop.best().val_bpb  # scored honestly: it learned nothing
    assert protected(ws, tiny_prepared) == before
    assert own_refs(ws) == refs
    assert ws.git.changed_paths() == set() and json.loads(exp.result)["confined"] is True


def test_a_process_left_behind_to_edit_files_later_dies_with_the_run(lab, tiny_prepared: Path) -> None:
    ws, loop = lab
    marker = f"autoresearch-red-team-{os.getpid()}"
    program, tsv = ws.root / "program.md", ws.root / "results.tsv"
    script = f"sleep 2; echo pwned >> {program}; echo pwned >> {tsv}"
    spawn = (
        "    import subprocess, time\n"
        f"    subprocess.Popen(['sh', '-c', {script!r}, '{marker}'], start_new_session=True)\n"
        "    print('SPAWNED', time.time(), flush=True)\n"
    )
    before = protected(ws, tiny_prepared)
    exp = loop.step(one_edit("leave a process behind", [(START, START + spawn)]))  # otherwise honest: kept or not
    spawned = float(run_log(ws, exp.id).rsplit("SPAWNED", 1)[1].split()[0])  # the last run's (a marginal win: two)
    time.sleep(max(0.0, spawned + 3 - time.time()))  # past when it would have written (a run often lasts that long)
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert protected(ws, tiny_prepared) == before


# Forks until refused, each child an exec'd `sleep` with a number of its own (to be found if it outlived the run).
FORK_WITHOUT_END = """\
    import os
    print("USER", os.getuid(), flush=True)
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{{fd}}"))
        except OSError:  # the listing's own
            pass
    print("NAMESPACES HELD", [link for link in links if link.startswith("user:")], flush=True)
    for forked in range(200):
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "{marker}"])
        print("FORKED", forked + 1, flush=True)
"""


RUN_USERS = ["auto", "root", "nobody, started"]  # AUTORESEARCH_RUN_USER, and a run started as a new process


@pytest.mark.parametrize("user", RUN_USERS)
def test_a_train_py_that_forks_without_end_gets_its_cap_of_tasks_and_no_more(lab, monkeypatch, user) -> None:
    """A fork bomb fills the machine's process table within a second: the loop then cannot start git, another
    worker's honest run cannot start its compiler's workers (a crash, not retried). A run gets at most
    AUTORESEARCH_TASKS tasks (evaluator/tasks.py: a pids cgroup for a loop run as root, RLIMIT_NPROC in the
    run's user namespace otherwise, and for a root loop's run as a user of its own, its default), says so in
    its log, and leaves neither a process nor its group behind. BROKE before: all 200 forks went through. A root
    loop's run as `nobody` (its default), forked or started as a new process, and as root in its pids group."""
    ws, _ = lab
    monkeypatch.setenv(tasks.TASKS_ENV, "48")
    monkeypatch.setenv(run_user.RUN_USER_ENV, user.split(",")[0])
    if user.endswith("started"):
        monkeypatch.setenv(switches.FORK_SERVER, "0")
    if not sandbox.runs_capped(48):
        pytest.skip("runs are not capped here (`run` warns): root, no pids group, no user of their own")
    if user != "auto" and os.getuid() != 0:
        pytest.skip("only a loop run as root chooses its runs' user")
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)  # its evaluators start with this env
    marker = f"{os.getpid() % 1000}.{time.time_ns() % 10**6}"
    exp = loop.step(one_edit("fork without end", [(START, START + FORK_WITHOUT_END.format(marker=marker))]))
    log = first_run_log(ws, exp.id)
    forked = int(re.findall(r"FORKED (\d+)", log)[-1])
    assert 0 < forked < 48 and "Resource temporarily unavailable" in log, log
    assert os.getuid() != 0 or f"USER {0 if user == 'root' else run_user.RUN_UID}" in log, log
    assert "NAMESPACES HELD []" in log, log  # BROKE, fixed: started, it held its user namespace's (red team)
    assert "the run was refused a new process or thread: it may have 48 tasks at once" in log, log
    assert exp.status == Status.CRASH
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    assert groups_left("pids") == []
    lr = re.search(r"^LR = [0-9.]+", ws.read_train_py(), re.M)[0]  # the lab's best: an earlier parameter's may be kept
    honest = f"{lr}{RUN_USERS.index(user) + 1}"  # another for each parameter: one measured already is not run again
    assert loop.step(one_edit("an honest change", [(lr, honest)])).status != Status.CRASH


# Asks for core dumps of any size again, then crashes a child of its own.
DUMP_CORES = """\
    import os, resource
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("CORE raised", flush=True)
    except (OSError, ValueError):
        print("CORE kept", resource.getrlimit(resource.RLIMIT_CORE), flush=True)
    if (child := os.fork()) == 0:
        os.abort()
    print("CORE dumped" if os.WCOREDUMP(os.waitpid(child, 0)[1]) else "CORE none", flush=True)
"""


def test_a_train_py_gets_no_core_dump_and_cannot_ask_for_one(lab) -> None:
    """A crashing process's core dump is piped to the system's crash reporter where `core_pattern` names one
    (systemd-coredump, apport), which the kernel starts as root outside the run's cgroups, for each crash: gigabytes
    left behind the run, and as many reporters as a train.py crashes processes. A run's core limit is 1 byte (no dump,
    piped or not: harness/boot.py `no_core_dumps`), and it cannot raise it."""
    ws, loop = lab
    exp = loop.step(one_edit("crash a child", [(START, START + DUMP_CORES)]))
    log = first_run_log(ws, exp.id)
    assert "CORE kept (1, 1)" in log and "CORE none" in log, log
    assert exp.status != Status.CRASH, exp.reason


# Announces a `hello` of 1 GiB on the harness's own channel, to be read into the evaluator's memory.
FLOOD_THE_EVALUATOR = """\
    import json, struct
    head = json.dumps({"op": "hello", "payload": 1 << 30}).encode()
    with run._channel._lock:
        run._channel.sock.sendall(struct.pack(">I", len(head)) + head + bytes(1 << 20))
        run._channel.receive()
"""


def test_a_train_py_cannot_have_its_evaluator_hold_memory_for_it(lab) -> None:
    """The evaluator, outside the run's share of memory, read any request's payload whole, up to 64 GiB: a train.py
    sent a `hello` of 1 GiB and made it hold 2.2 GiB beyond its 640 MiB, at no cost, as its run was judged as any
    other (red team). Only the graph and the weights may carry bytes now, up to their most (wire.py's `payloads`):
    the run broke the protocol, unread."""
    _, loop = lab
    exp = loop.step(one_edit("flood the evaluator", [(START, START + FLOOD_THE_EVALUATOR)]))
    assert exp.status == Status.CRASH, exp.reason
    assert "broke the protocol: a payload of 1,073,741,824 bytes for 'hello', which may carry 0 at most" in exp.reason


# A graph that, as the evaluator scores it (never as the run trains), allocates 2 GiB on the evaluator's CPU.
BIG_WHEN_SCORED = (
    ("        self.table = nn.Embedding(vocab_size, vocab_size)\n",
     "        self.table = nn.Embedding(vocab_size, vocab_size)\n        self.big = False\n"),
    ("        logits = self.table(idx)\n",
     "        logits = self.table(idx)\n"
     "        if self.big:\n"
     "            logits = logits + torch.ones(1 << 29, device='cpu')[:1].sum() * 0\n"),
    ("    run.set_model(model)\n", "    model.big = True\n    run.set_model(model)\n    model.big = False\n"),
)  # fmt: skip


def test_a_graph_cannot_have_its_evaluator_hold_memory_beyond_the_runs_share(lab, monkeypatch) -> None:
    """The graph a run hands over is built and run in its evaluator, outside the run's group: one that allocated
    1.5 GiB as it was scored (`torch.ones` of any size passes the operator check) grew the evaluator so, and was
    judged as any other (red team). The evaluator now holds the run's share with the run (its group is the run's
    group's parent): the kernel kills it there, and the loop records a crash."""
    ws, _ = lab
    monkeypatch.setenv(memory.MEMORY_ENV, "1536M")
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)
    exp = loop.step(one_edit("a big graph", BIG_WHEN_SCORED))
    assert exp.status == Status.CRASH, exp.reason
    assert "memory" in exp.reason, exp.reason
    honest = loop.step(one_edit("an honest change", [(START, START + "    honest = 2\n")]))
    assert honest.status != Status.CRASH, honest.reason


# Spreads 1.2 GB over 8 processes of 150 MB each, none of them bigger than the loop, then trains as shipped.
SPREAD_MEMORY = """\
    import os, time
    for _ in range(8):
        if os.fork() == 0:
            held = b"\\x01" * (150 << 20)
            time.sleep(600)
"""
# Whether the loop gives every run a memory group here (a loop run as root: cgroup v1, or v2 beside its own cgroup).
MEMORY_GROUPS = "memory" in run_group.limitable(memory.limits(1 << 30))


@pytest.mark.skipif(not MEMORY_GROUPS, reason="no run is given a memory group here (a loop run as root: CI)")
def test_a_train_py_that_spreads_its_memory_over_many_processes_is_killed_within_its_share(lab, monkeypatch) -> None:
    """When the machine runs out of memory the kernel kills the process that holds the most; a train.py that spread
    its memory over many small processes left the loop as the biggest, and the night ended there. A run now holds at
    most its share (evaluator/memory.py, AUTORESEARCH_RUN_MEMORY), by a memory cgroup of its own: the kernel kills
    within the run once it has its share, the log says why, and the loop goes on."""
    ws, _ = lab
    monkeypatch.setenv(memory.MEMORY_ENV, "640M")
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)  # its evaluators start with this env
    exp = loop.step(one_edit("hold memory in many processes", [(START, START + SPREAD_MEMORY)]))
    log = first_run_log(ws, exp.id)
    assert "the kernel killed a process of the run for its memory: the run may hold 640 MiB" in log, log
    assert exp.status == Status.CRASH and "killed a process of the run for its memory" in exp.reason, exp.reason
    honest = loop.step(one_edit("an honest change", [(START, START + "    honest = 1\n")]))
    assert honest.status != Status.CRASH, honest.reason
    # Its group is removed once the killed tasks have left it: by its evaluator within REMOVE_WAIT_S, or, on a loaded
    # machine where the kernel takes longer to reap them (seen in CI), by the next run's sweep; none is left after it
    assert groups_left("memory") == []


def test_a_runs_processes_are_the_kernels_first_to_kill_for_memory_not_its_evaluator(lab) -> None:
    """The evaluator's group holds the run's share with the evaluator's own memory on top of the run's group: on cgroup
    v2 it ran out first and the kernel took the evaluator along with the run, whose log then said nothing of why
    (BROKE on the lent GPU machines). A run's processes are now the kernel's first choice (memory.kill_first), the
    forked experiment's and what it starts alike, so the evaluator lives to say why."""
    ws, loop = lab
    report = '    print("oom_score_adj:", open("/proc/self/oom_score_adj").read().strip(), flush=True)\n'
    exp = loop.step(one_edit("read how soon it is killed", [(START, START + report)]))
    own = int(Path("/proc/self/oom_score_adj").read_text())  # the loop's, and so its evaluators': untouched
    assert own < memory.OOM_SCORE_ADJ_MAX, own
    sooner = min(memory.OOM_SCORE_ADJ_MAX, own + memory.RUN_OOM_SCORE_ADJ)
    assert f"oom_score_adj: {sooner}" in first_run_log(ws, exp.id)
    assert exp.status != Status.CRASH, exp.reason


# The experiment is forked from the evaluator: whatever is in the evaluator's memory when it forks is in the
# experiment's. It scans every writable page it has (heap, stack with the environment block, ...) for the
# loop's secrets, knowing only their digests (the secrets themselves must not be in its own source).
SCAN = """\
    import hashlib
    found = []
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "w" not in fields[1] and not line.rstrip().endswith("[stack]"):
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for prefix, size, digest in {wanted!r}:
                at = chunk.find(prefix)
                while at >= 0:
                    if hashlib.sha256(chunk[at:at + size]).hexdigest() == digest:
                        found.append(prefix.decode())
                    at = chunk.find(prefix, at + 1)
    print("SCANNED", sorted(set(found)))
"""


def test_the_loops_secrets_are_nowhere_in_the_experiments_memory(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import secrets as random_secrets

    ws, _ = lab
    planted = {
        "OPENAI_API_KEY": "sk-redteam-" + random_secrets.token_hex(16),
        "DATABASE_URL": "postgres://loop:pw-redteam-" + random_secrets.token_hex(16) + "@db",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    wanted = []
    for value in planted.values():
        prefix = value.split("-redteam-")[0].encode() + b"-redteam-"
        wanted.append((prefix, len(value), hashlib.sha256(value.encode()).hexdigest()))
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)  # its evaluators start with this env
    exp = loop.step(one_edit("scan memory", [(START, START + SCAN.format(wanted=wanted) + PROBED)]))
    log = run_log(ws, exp.id)
    assert "SCANNED []" in log, log
    # The scan works: in a process started with this environment, it finds both.
    control = subprocess.run([sys.executable, "-c", textwrap.dedent(SCAN.format(wanted=wanted))], capture_output=True,
                             text=True, timeout=120, check=True)  # fmt: skip
    assert control.stdout.strip() == f"SCANNED {sorted(p.decode() for p, _, _ in wanted)}", control.stdout


@pytest.mark.parametrize(
    ("forward", "reason"),
    [
        (
            "        logits = self.table(idx if torch.is_grad_enabled() else idx.roll(-1, dims=1))\n",
            "causality probe",
        ),
        # The graph is traced for the evaluation's batch shape: it looks ahead in every call, the probe's too.
        ("        logits = self.table(idx if idx.shape[0] == BATCH else idx.roll(-1, dims=1))\n", "causality probe"),
    ],
    ids=["grad-mode", "batch-shape"],
)
def test_a_model_that_looks_ahead_only_when_evaluated_is_caught(lab, forward: str, reason: str) -> None:
    _, loop = lab
    best = loop.best().id
    exp = loop.step(one_edit("look ahead when evaluated", [("        logits = self.table(idx)\n", forward)]))
    assert exp.status == Status.CRASH and reason in exp.reason, exp.reason
    assert loop.best().id == best


def test_unconfined_a_run_that_writes_outside_train_py_is_a_crash_and_everything_is_put_back(
    lab, tiny_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, lab_loop = lab
    monkeypatch.setenv("AUTORESEARCH_SANDBOX", "off")
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)
    targets = secrets_of(ws, loop, tiny_prepared)
    targets["writes"] = [t for t in targets["writes"] if "runs" not in t]  # the result file is the evaluator's
    before, refs, digest = protected(ws, tiny_prepared), own_refs(ws), package_digest()
    exp = loop.step(one_edit("reach, unconfined", [(START, START + REACH.format(**targets))]))
    assert "REACHED write" in run_log(ws, exp.id)  # nothing stopped it...
    assert exp.status == Status.CRASH and "changed files outside train.py" in exp.reason  # ...but it is not believed
    for name in ("post-checkout", "results.tsv", "ledger.sqlite", "autoresearch.json"):
        assert name in exp.reason, exp.reason
    assert protected(ws, tiny_prepared) == before  # and all of it is put back
    assert own_refs(ws) == refs
    assert package_digest() == digest and loop.best().id == lab_loop.best().id != exp.id
    # Unconfined against a confined baseline, its result is set aside as not comparable, whatever else it did
    assert json.loads((ws.state / "runs" / f"{exp.id}-0" / "result.refused.json").read_text())["confined"] is False


def test_a_run_whose_evaluator_cannot_probe_the_sandbox_is_still_confined_never_unconfined(
    lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop found confinement working; an evaluator's own probe (bubblewrap running `true`) then failed, as a
    moment short of processes or memory makes it fail. The evaluator trained the run unconfined: with several
    workers, whose workspace is not checked after each run, nothing then kept it out of the workspace."""
    ws, _ = lab
    wrapper = tmp_path / "bwrap"  # bubblewrap, failing the probe alone
    probe_fails = '#!/bin/sh\nfor a; do last=$a; done\n[ "$last" = true ] && exit 1\n'
    wrapper.write_text(f'{probe_fails}exec {sandbox.bwrap()} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sandbox, "bwrap", lambda: str(wrapper))
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)
    try:
        exp = loop.step(one_edit("probe fails", [(START, START + "    print('trained')\n")]))
    finally:
        loop.executor.close()
    assert "runs unconfined" not in run_log(ws, exp.id)
    assert exp.status != Status.CRASH and json.loads(exp.result)["confined"] is True, exp.reason


def test_a_sandbox_that_cannot_be_made_for_a_run_stops_the_loop_saying_why_and_the_run_is_no_crash(
    tmp_path: Path, tiny_prepared: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side: bubblewrap fails for the run itself (here, after the loop's probe passed). That is no fault
    of the experiment's, and its run must not be trained unconfined either."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    wrapper = tmp_path / "bwrap"
    wrapper.write_text('#!/bin/sh\necho "bwrap: No permissions to create new namespace" >&2\nexit 1\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sandbox, "bwrap", lambda: str(wrapper))
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)
    try:
        with pytest.raises(LoopError, match=r"cannot confine train\.py: .*No permissions to create new namespace"):
            loop.baseline()
    finally:
        loop.executor.close()
    (baseline,) = Ledger(ws.root).all()
    assert baseline.status == Status.RUNNING and baseline.run_values == []  # in flight: trained on the next start


# Two train.py files written together: the first leaves something where it may write compiled code, and tries the
# shared compile cache that later runs read (a checkpoint, say); the second looks for it.
LEAVE = """\
    import errno, os
    with open(os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "carried-over.txt"), "w") as f:
        f.write("weights from an earlier run")
    try:
        with open({shared!r}, "w") as f:
            f.write("weights from an earlier run")
        print("WROTE THE SHARED CACHE")
    except OSError as exc:
        print("shared cache refused:", errno.errorcode[exc.errno])
    raise SystemExit(3)  # not kept, whatever luck the noise would give an honest run
"""
FIND = """\
    import os
    found = os.path.exists(os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "carried-over.txt"))
    print("CARRIED OVER" if found or os.path.exists({shared!r}) else "nothing carried over")
"""


@pytest.mark.parametrize("mode", ["run", "shared"])
def test_a_run_not_kept_leaves_nothing_in_the_compile_cache_for_the_next(
    lab, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, _ = lab
    monkeypatch.setenv("AUTORESEARCH_COMPILE_CACHE", mode)
    shared_dir = compile_cache.shared_dirs()["TORCHINDUCTOR_CACHE_DIR"]
    shared_dir.mkdir(parents=True, exist_ok=True)
    shared = str(shared_dir / f"planted-{os.urandom(4).hex()}.txt")
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)  # its evaluators start with this env
    left = loop.step(one_edit("leave a file in the compile cache", [(START, START + LEAVE.format(shared=shared))]))
    assert left.status == Status.CRASH
    # Read-only where it is shown, absent where it is not (a per-run cache shows none; the cache is under /tmp here)
    assert re.search("shared cache refused: (EROFS|ENOENT)", run_log(ws, left.id)), run_log(ws, left.id)
    exp = loop.step(one_edit("look for it", [(START, START + FIND.format(shared=shared) + PROBED)]))
    assert "nothing carried over" in run_log(ws, exp.id)


READ_CORPUS = """\
    import os
    for top, _, names in os.walk({corpus!r}):
        for name in names:
            print("REACHED the corpus:", os.path.join(top, name), open(os.path.join(top, name)).read(40)[:20])
    print("corpus walked")
"""


def test_a_train_py_cannot_read_the_raw_corpus_its_validation_rows_were_cut_from(
    tmp_path: Path, corpus_dir: Path, cache_dir: Path, subprocess_env: dict[str, str]
) -> None:
    """BROKE, fixed: a `local:PATH` corpus (or `python-source --root DIR`) stayed readable to train.py, which
    could split it as `prepare` does and train on the validation text; only the prepared data was hidden.
    (The tests' corpora all lay under /tmp, which is private to the run, so none showed it.) The evaluator now
    hides the corpus the manifest names, unless Python itself lives there (python-source's default)."""
    from conftest import quiet_console
    from loop_support import make_workspace

    from autoresearch.config.presets import get_preset
    from autoresearch.data.prepare import prepare

    outside_tmp = Path(tempfile.mkdtemp(prefix="autoresearch-red-team-corpus-", dir="/var/tmp"))
    try:
        corpus = outside_tmp / "corpus"
        for i, path in enumerate(sorted(corpus_dir.rglob("*.py"))):  # as text: what local:PATH reads
            corpus.joinpath(f"{i // 100}").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, corpus / f"{i // 100}" / f"{i}.txt")
        data = prepare(f"local:{corpus}", get_preset("tiny"), cache_dir, console=quiet_console())
        ws = make_workspace(tmp_path / "ws", data)
        walk = READ_CORPUS.format(corpus=str(corpus)) + PROBED
        source = ws.root.joinpath("train.py").read_text().replace(START, START + walk)
        ws.root.joinpath("train.py").write_text(source)
        proc = subprocess.run([sys.executable, "train.py"], cwd=ws.root, env=subprocess_env, capture_output=True,
                              text=True, timeout=240, check=False)  # fmt: skip
    finally:
        shutil.rmtree(outside_tmp)
    assert "corpus walked" in proc.stdout, proc.stdout + proc.stderr
    assert "REACHED" not in proc.stdout, proc.stdout


# Replaces its compile-cache layer with a link to a directory it cannot even see: the evaluator, which collects
# what a run compiled from that layer after it ends, resolves the link outside the sandbox.
LINK_LAYER = """\
    import os, shutil
    layer = os.environ["TORCHINDUCTOR_CACHE_DIR"] if {which!r} == "inductor" else ".compile"  # the box is the cwd
    shutil.rmtree(layer)
    os.symlink({victim!r}, layer)
    print("layer linked to", os.readlink(layer), flush=True)
"""


@pytest.mark.parametrize("which", ["inductor", "layer"])
def test_a_compile_cache_layer_replaced_by_a_link_takes_nothing_from_where_it_points(
    tmp_path: Path, tiny_prepared: Path, subprocess_env: dict[str, str], which: str
) -> None:
    """BROKE, fixed: the evaluator collected the run's compiled files by walking its layer's top directories,
    following a top that the run had replaced by a link: what lay where it pointed (here a stand-in for ~/.ssh;
    the validation shard, the workspace's files) was moved out of there, into the run's staged files, then into
    the shared compile cache for later runs to read if the run was kept, or deleted if not. A top that is not a
    directory of the box's own is not collected now."""
    from loop_support import make_workspace

    victim = tmp_path / "victim" / "inductor"
    victim.mkdir(parents=True)
    (victim / "id_ed25519").write_text("the user's key")
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    linked = LINK_LAYER.format(which=which, victim=str(victim if which == "inductor" else victim.parent))
    # Then it ends: what it compiled is taken from its layer all the same (referee.py: `harvest`, crash or not)
    source = ws.root.joinpath("train.py").read_text().replace(START, START + linked + PROBED)
    run_dir = ws.state / "runs" / "1-0"
    run_dir.mkdir(parents=True)
    job = {"source": source, "log": str(run_dir / "log.txt"), "result": str(run_dir / "result.json")}
    referee = subprocess.Popen([sys.executable, "-m", "autoresearch.evaluator.referee", "--workspace", str(ws.root)],
                               stdin=subprocess.PIPE, env=subprocess_env, text=True)  # fmt: skip
    referee.stdin.write(json.dumps(job) + "\n")
    referee.stdin.flush()  # and kept open: its end is the loop's, which stops the run
    referee.wait(timeout=240)
    referee.stdin.close()
    log = (run_dir / "log.txt").read_text()
    assert "layer linked to" in log, log
    assert (victim / "id_ed25519").read_text() == "the user's key"
    assert not [p for p in run_dir.rglob("*") if p.name == "id_ed25519"]


# Nests folders 3,000 deep in its box (6,000 characters: more than a path may name) and 1,500 deep in its compile
# cache layer, a file at the bottom of each; otherwise honest.
NEST_DEEP = """\
    import os
    for top, depth in ((".", 3000), (os.environ["TORCHINDUCTOR_CACHE_DIR"], 1500)):
        here = os.open(top, os.O_RDONLY)
        for _ in range(depth):
            os.mkdir("d", dir_fd=here)
            here = os.open("d", os.O_RDONLY, dir_fd=here)
        os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, dir_fd=here))
        print("NESTED", depth, flush=True)
"""


def test_folders_a_run_nests_deep_are_removed_and_stop_neither_its_verdict_nor_a_later_start(lab) -> None:
    """BROKE, fixed: the evaluator removed the run's box with `shutil.rmtree` and listed its compiled files with
    `os.walk`, both recursive: a train.py that nested 1,500 folders was a crash ("RecursionError"), its box stayed,
    and every later start failed removing it. Now the box goes whatever its depth (files.remove_tree), and compiled
    files deeper than a compiler makes are not taken (compile_cache.MAX_DEPTH)."""
    ws, loop = lab
    boxes = set(ws.state.glob("box-*"))  # what is there before the run (the lab starts no evaluator ahead)
    exp = loop.step(one_edit("nest folders deep", [(START, START + NEST_DEEP)]))
    log = first_run_log(ws, exp.id)
    assert "NESTED 3000" in log and "NESTED 1500" in log, log
    assert exp.status != Status.CRASH, exp.reason
    assert set(ws.state.glob("box-*")) == boxes
    assert list((ws.state / "runs").glob(f"{exp.id}-0/compile")) == []  # nothing staged: the file lay too deep
    loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)  # a later start
    loop.recover_workspace()
    # An edit that applies to whichever train.py the lab's tests have kept so far, and leaves LR for the others.
    assert loop.step(one_edit("an honest change", [(START, START + "    after_nesting = 1\n")])).status != Status.CRASH
