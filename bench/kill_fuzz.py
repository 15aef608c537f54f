"""Kill the real loop at random moments, many times, and check after each kill what a user relies on.

    PYTHONPATH=$PWD/src .venv/bin/python bench/kill_fuzz.py --kills 200 --seed 1 --workers 1

Each episode makes a fresh workspace (the tests' bigram train.py, a budget of `--budget` seconds on the tiny
preset), then repeatedly starts `autoresearch run --agent tune --plain --baseline-runs 2` (or `try` on an edit, or
`run --ray` on a Ray node of this machine with two pretend GPUs), and signals it after a random delay: SIGKILL
mostly, SIGINT and SIGTERM sometimes. The delay is either drawn over the whole life of a start, or taken a few
milliseconds after a random event line of `--plain` (a verdict, a run's start, the agent's turn), so that the short
windows between a ledger write and a git move are hit too. After each kill: no process the killed loop started is
left running; `status`, `report` and `show` run without a traceback; the rows written before the kill are all there,
unchanged where final; what was in flight is taken up again under its id. At the end of an episode a start that is
not killed finishes (`--max-experiments`), and then: every row final, ids consecutive, no proposal judged twice,
results.tsv agrees with the ledger, the branch head is the last kept row's commit with train.py equal to it, git
status clean, no worktree or stray file left.

`--submit` plays a coding agent that keeps two workers busy (README's `submit` and `wait`): each step writes an
edit of train.py (a new LR on the best; sometimes two, the first submitted unkilled before the second), runs
`autoresearch submit -m ... --workers 2` (which starts the background loop, `run --agent queue`, when none runs) or
`autoresearch wait`, and signals that command or the background loop (found by its command line and its cwd, the
workspace; its exit status read as this process is made the orphans' reaper) at a moment drawn the same four ways
(the events: lines of `.autoresearch/driver.log`, or of the command's output; the writes: also the inbox, the held
changes and the unreported marks). After a `submit` killed, the agent sometimes runs `submit` again on the best, which
must put the change back. After each kill, besides the checks above: a background loop signalled exits (SIGINT 130,
SIGTERM 143, no traceback in its log); nothing runs that is not under the loop running now; every `exp N queued` is
a row of that submission; a killed `submit`'s change is in train.py, a row, `.autoresearch/submitting/` or
`unsubmitted/`; no verdict printed twice by `wait`, and each as the ledger has it; a `submit` that exits 2 leaves its
change in train.py; a `wait` that exits 2 does so for a loop that stopped. At the end of an episode: the held changes
put back by `submit` (then given up), `run --agent queue` where no loop runs, the last `wait`, the loop stopped with
SIGINT; then every submitted experiment (and merge of one) has had its verdict printed once, and the final checks.

Writes a JSON summary (`--out`); exits 1 if any invariant broke. One fuzzer at a time on a small machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from loop_support import BIGRAM_TRAIN_PY  # noqa: E402

from autoresearch.config.presets import get_preset  # noqa: E402
from autoresearch.data.prepare import prepare  # noqa: E402
from autoresearch.workspace.init import create_workspace  # noqa: E402
from autoresearch.workspace.workspace import Workspace  # noqa: E402

CORPUS_PACKAGES = ("json", "email", "asyncio")
SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT, "TERM": signal.SIGTERM}
FINAL = ("keep", "discard", "crash")
# Lines of `--plain` after which a kill lands in a short window: a verdict (ledger written, git moving, results.tsv
# and report next), a run starting or ending, the agent's turn, the baseline's seeds.
EVENTS = re.compile(r"KEEP|DISCARD|CRASH|training run|proposing|baseline|trained|reset|kept|merge|report", re.I)


@dataclass
class Violation:
    episode: int
    kill: int
    what: str

    def __str__(self) -> str:
        return f"episode {self.episode} kill {self.kill}: {self.what}"


@dataclass
class Stats:
    kills: dict[str, int] = field(default_factory=dict)
    triggers: dict[str, int] = field(default_factory=dict)
    starts: int = 0
    episodes: int = 0
    experiments: int = 0
    exited_before_kill: int = 0
    baseline_refusals: int = 0  # starts that stopped on a baseline two kills had crashed
    targets: dict[str, int] = field(default_factory=dict)  # `--submit`: what was killed
    violations: list[Violation] = field(default_factory=list)


def make_data(scratch: Path) -> Path:
    """A corpus of the interpreter's own sources (as the tests' `corpus_dir`), prepared for the tiny preset."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = scratch / "corpus"
    for package in CORPUS_PACKAGES:
        for src in sorted((stdlib / package).rglob("*.py")):
            dest = corpus / package / src.relative_to(stdlib / package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    return prepare("python-source", get_preset("tiny"), scratch / "cache", root=corpus)


def make_workspace(path: Path, data: Path, budget: float) -> None:
    create_workspace(path, get_preset("tiny"), "python-source", data, budget, tag="fuzz")
    ws = Workspace(path)
    ws.write_train_py(BIGRAM_TRAIN_PY)
    ws.git.commit("bigram train.py for the kill fuzz", "train.py")


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout


def rows_of(ws: Path) -> list[dict]:
    """The ledger's rows, read-only (the fuzzer never writes the loop's files)."""
    path = ws / ".autoresearch" / "ledger.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM experiments ORDER BY id")]
    except sqlite3.OperationalError:  # no table yet
        return []
    finally:
        db.close()


class Watched:
    """A started command: its output lines as they come, and every process it started (pid, start time)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.log = log.open("a")
        self.log.write(f"\n===== {' '.join(argv)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: list[tuple[float, str]] = []
        self.descendants: dict[int, tuple[float, str]] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))
            self.log.write(line)
        self.log.flush()

    def note_descendants(self) -> None:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                self.descendants.setdefault(child.pid, (child.create_time(), " ".join(child.cmdline())[:200]))
            except psutil.Error:
                continue

    def wait(self, timeout: float) -> int | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                return self.proc.returncode
            self.note_descendants()
            time.sleep(0.05)
        return None

    def output(self) -> str:
        return "".join(line for _, line in self.lines)


def alive(pid: int, created: float) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - created) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.Error:
        pass
    return None


# With `--ray` the fuzzer's own Ray node carries its cache in its environment too: its daemons and its idle workers
# are the node's, not a loop's. A worker still running a task of a killed loop shows the task's name instead.
RAY_OWN = re.compile(r"raylet|gcs_server|dashboard|log_monitor|monitor\.py|runtime_env|ray::IDLE|ray_client_server")


def marked_processes(cache: Path) -> list[tuple[int, str]]:
    """Processes (pid, command line) whose environment names this fuzzer's cache: only what its loops started."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AUTORESEARCH_CACHE") == str(cache) and process.status() != psutil.STATUS_ZOMBIE:
                command = " ".join(process.cmdline())
                if not RAY_OWN.search(command):
                    found.append((process.pid, command[:200]))
        except psutil.Error:  # gone, or a zombie meanwhile
            continue
    return found


class Fuzzer:
    def __init__(self, args: argparse.Namespace, scratch: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.scratch = scratch
        self.cache = scratch / "cache"
        self.stats = Stats()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "AUTORESEARCH_CACHE": str(self.cache),
            "COLUMNS": "300",
            "PYTHONUNBUFFERED": "1",
        }
        self.data = make_data(scratch)
        self.log = scratch / "fuzz.log"
        self.episode = 0
        self.kill_no = 0
        self.edit: tuple[str, str] | None = None  # `try`: the edit being tried (description, train.py)
        self.ray_address = ""

    # ----- the checks

    def fail(self, what: str) -> None:
        violation = Violation(self.episode, self.kill_no, what)
        self.stats.violations.append(violation)
        print(f"  VIOLATION {violation}", flush=True)

    def cli(self, ws: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "autoresearch", *args], cwd=ws, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def check_no_leftovers(self, watched: Watched, grace: float = 20) -> None:
        """Nothing the ended loop started runs on (the evaluators stop when the loop's end closes their stdin)."""
        end = time.monotonic() + grace
        while True:
            left = [(pid, cmd) for pid, (created, cmd) in watched.descendants.items() if alive(pid, created)]
            left += [(pid, cmd) for pid, cmd in marked_processes(self.cache) if pid != os.getpid()]
            left = list(dict(left).items())
            if not left or time.monotonic() > end:
                break
            time.sleep(0.25)
        for pid, cmd in left:
            self.fail(f"process {pid} left running {grace:.0f} s after its loop ended: {cmd}")
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)

    def check_commands(self, ws: Path, rows: list[dict]) -> None:
        """`status`, `report` and `show` answer after a kill, without a traceback."""
        commands = [("status",)] + ([("report",)] if self.rng.random() < self.args.report_share else [])
        if rows:
            commands.append(("show", str(self.rng.choice(rows)["id"])))
        for command in commands:
            done = self.cli(ws, *command)
            text = done.stdout + done.stderr
            if "Traceback" in text or done.returncode not in (0,):
                self.fail(f"`{' '.join(command)}` exited {done.returncode}: {text.strip()[-600:]}")
            elif command == ("status",) and (said := re.findall(r"^running:.*", done.stdout, re.M)):
                self.fail(f"`status` says {said} with no loop running")

    def check_history_kept(self, before: list[dict], after: list[dict], when: str) -> None:
        """Rows never vanish or change id; a final row never changes; an unfinished one keeps what it is."""
        by_id = {r["id"]: r for r in after}
        ids = [r["id"] for r in after]
        if ids != list(range(1, len(ids) + 1)):
            self.fail(f"{when}: ledger ids not consecutive: {ids}")
        for old in before:
            new = by_id.get(old["id"])
            if new is None:
                self.fail(f"{when}: row {old['id']} ({old['description']!r}, {old['status']}) vanished")
                continue
            if old["status"] in FINAL:
                changed = [k for k in ("status", "val_bpb", "commit", "description", "source") if old[k] != new[k]]
                if changed:
                    self.fail(f"{when}: final row {old['id']} changed {changed}: {old['status']} -> {new['status']}")
            elif (old["description"], old["kind"]) != (new["description"], new["kind"]):
                self.fail(f"{when}: in-flight row {old['id']} became another: {old['description']!r} -> "
                          f"{new['description']!r}")  # fmt: skip
            elif old["commit"] and new["commit"] != old["commit"] and not self.moved_onto_a_keep(old, new, by_id):
                self.fail(f"{when}: in-flight row {old['id']} moved commit {old['commit'][:8]} -> {new['commit']}")

    @staticmethod
    def moved_onto_a_keep(old: dict, new: dict, by_id: dict[int, dict]) -> bool:
        """A change made on a best that another keep replaced while it trained is merged onto (or moved onto) the new
        best by design (loop/ratchet.py): its commit changes with its parent, which is then a kept row's commit."""
        kept = {r["commit"] for r in by_id.values() if r["status"] == "keep"}
        return new["parent"] != old["parent"] and new["parent"] in kept

    def check_final(self, ws: Path, rows: list[dict]) -> None:
        """After a start that finished by itself."""
        not_final = [r["id"] for r in rows if r["status"] not in FINAL]
        if not_final:
            self.fail(f"rows not final after a clean finish: {not_final}")
        judged: dict[tuple[str, str], int] = {}
        for r in rows:
            if r["status"] in ("keep", "discard") and r["kind"] == "experiment" and r["source"]:
                key = (r["parent"], r["source"])
                if key in judged:
                    self.fail(f"rows {judged[key]} and {r['id']} judge the same train.py on the same base")
                judged[key] = r["id"]
        # results.tsv: one line per final row, in id order, with its commit and status
        tsv = (ws / "results.tsv").read_text().splitlines()[1:]
        finished = [r for r in rows if r["status"] in FINAL]
        if len(tsv) != len(finished):
            self.fail(f"results.tsv has {len(tsv)} lines, the ledger {len(finished)} final rows")
        for line, r in zip(tsv, finished, strict=False):
            cols = line.split("\t")
            if cols[3] != r["status"] or (r["commit"] and not r["commit"].startswith(cols[0])):
                self.fail(f"results.tsv line {line!r} disagrees with row {r['id']} ({r['status']}, {r['commit']})")
        kept = [r for r in rows if r["status"] == "keep"]
        head = git(ws, "rev-parse", "HEAD").strip()
        if kept and head != kept[-1]["commit"]:
            self.fail(f"branch head {head[:8]} is not the last kept row's commit {kept[-1]['commit'][:8]} "
                      f"(row {kept[-1]['id']})")  # fmt: skip
        if kept and (ws / "train.py").read_text() != kept[-1]["source"]:
            self.fail(f"train.py is not the last kept row's ({kept[-1]['id']})")
        status = git(ws, "status", "--porcelain", "--ignored", "--untracked-files=all")
        stray = [line for line in status.splitlines() if not self._expected(line[3:])]
        if stray:
            self.fail(f"git status not clean: {stray}")
        worktrees = [
            line for line in git(ws, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")
        ]
        if len(worktrees) != 1:
            self.fail(f"worktrees left: {worktrees}")
        if (ws / ".autoresearch" / "workers").exists() and any((ws / ".autoresearch" / "workers").iterdir()):
            self.fail(f"worker folders left: {list((ws / '.autoresearch' / 'workers').iterdir())}")
        for name in ("turn.json", "held-train.py", "submitting"):  # submitting/: a folder, empty once all is queued
            path = ws / ".autoresearch" / name
            if path.exists() and not (path.is_dir() and not any(path.iterdir())):
                self.fail(f".autoresearch/{name} left after a clean finish")
        inbox = ws / ".autoresearch" / "inbox"
        if inbox.is_dir() and (left := sorted(p.name for p in inbox.iterdir())):
            self.fail(f"inbox files left after a clean finish: {left}")
        for leftover in (ws / ".autoresearch").glob("box-*"):
            self.fail(f"evaluator box left after a clean finish: {leftover.name}")

    @staticmethod
    def _expected(path: str) -> bool:
        """What a workspace holds by design (ignored or written by the loop)."""
        return path.startswith(".autoresearch/") or path in ("results.tsv", "report.md", "progress.png")

    # ----- the fuzz

    def run_args(self, max_experiments: int) -> list[str]:
        args = ["run", "--agent", "tune", "--plain", "--baseline-runs", "2", "--max-experiments", str(max_experiments)]
        if self.args.ray:
            args += ["--ray", self.ray_address]
        elif self.args.workers > 1:
            args += ["--workers", str(self.args.workers)]
        return args

    def start_ray(self) -> None:
        """A Ray node of this machine with two pretend GPUs (the runs train on the CPU), in the loops' environment, so
        that its workers run the package under test and are marked with the fuzzer's cache."""
        port = 20000 + self.rng.randint(0, 9999)
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}", "--num-cpus=2",
             "--num-gpus=2", "--include-dashboard=false", "--disable-usage-stats"],
            env=self.env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self.ray_address = f"127.0.0.1:{port}"

    def stop_ray(self) -> None:
        """Kill this fuzzer's Ray node (`ray stop` would stop every Ray of the machine's user)."""
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("AUTORESEARCH_CACHE") == str(self.cache) and process.pid != os.getpid():
                    process.kill()

    def start(self, ws: Path, args: list[str]) -> Watched:
        self.stats.starts += 1
        return Watched([sys.executable, "-m", "autoresearch", *args], ws, self.env, self.log)

    def try_args(self, ws: Path) -> list[str]:
        """`try` on the edit in flight: the one a kill left (train.py, or held aside), else a new one of LR."""
        held = ws / ".autoresearch" / "held-train.py"
        committed = git(ws, "show", "HEAD:train.py")
        if self.edit is None or ((ws / "train.py").read_text() == committed and not held.exists()):
            lr = round(self.rng.uniform(0.01, 0.9), 4)
            self.edit = (f"LR {lr}", re.sub(r"^LR = \S+", f"LR = {lr}", committed, count=1, flags=re.M))
            (ws / "train.py").write_text(self.edit[1])
        return ["try", "-m", self.edit[0], "--baseline-runs", "2"]

    def check_edit_kept(self, ws: Path, rows: list[dict]) -> None:
        """The edit given to a killed `try` is in a row, in train.py, or held aside for the next start."""
        if self.edit is None:
            return
        held = ws / ".autoresearch" / "held-train.py"
        places = [r["source"] for r in rows] + [(ws / "train.py").read_text()]
        places += [held.read_text()] if held.exists() else []
        if self.edit[1] not in places:
            self.fail(f"the edit given to a killed `try` ({self.edit[0]}) is nowhere: not in a row, train.py or held")

    def after_try(self, ws: Path, watched: Watched) -> None:
        """A `try` that ended by itself: its edit is judged (or refused, as a person would see); the next is new."""
        if watched.proc.returncode not in (0, 2) or "Traceback" in watched.output():
            self.fail(f"`try` exited {watched.proc.returncode}: {watched.output()[-800:]}")
        if watched.proc.returncode == 2:  # refused (the same as the best, measured already): drop the edit
            git(ws, "checkout", "train.py")
        self.edit = None

    def kill_once(self, ws: Path) -> None:
        """Start the loop, signal it at a random moment, check what a user relies on."""
        before = rows_of(ws)
        watched = self.start(ws, self.try_args(ws) if self.args.try_ else self.run_args(1000))
        name = self.rng.choices(["KILL", "INT", "TERM"], weights=[0.7, 0.15, 0.15])[0]
        trigger = self.rng.choice(["uniform", "event", "write", "write", "early"])
        self.stats.triggers[trigger] = self.stats.triggers.get(trigger, 0) + 1
        if trigger == "uniform":  # anywhere in a start's first minute
            watched.wait(self.rng.uniform(0, self.args.horizon))
        elif trigger == "early":  # start-up: recovery, the reaping, the fork server, the agent's first ask
            watched.wait(self.rng.uniform(0, 8))
        elif trigger == "write":  # just after the k-th write of the ledger, results.tsv, git's index or train.py
            self.after_writes(ws, watched, self.rng.randint(1, 40))
            watched.wait(self.rng.choice([0, 0, 0.002, 0.01, 0.05]))
        else:  # a few milliseconds after the k-th event line
            k = self.rng.randint(1, 12)
            end = time.monotonic() + self.args.horizon
            while time.monotonic() < end and watched.proc.poll() is None:
                events = [t for t, line in watched.lines if EVENTS.search(line)]
                if len(events) >= k:
                    break
                watched.note_descendants()
                time.sleep(0.005)
            watched.wait(self.rng.choice([0, 0.001, 0.01, 0.03, 0.1, 0.3]))
        watched.note_descendants()
        if watched.proc.poll() is not None and self.args.try_:
            self.stats.exited_before_kill += 1
            self.after_try(ws, watched)
            return
        if watched.proc.poll() is not None:
            self.stats.exited_before_kill += 1
            tail = watched.output()[-800:]
            if watched.proc.returncode == 2 and "while the baseline (exp" in " ".join(tail.split()):
                self.stats.baseline_refusals += 1  # by design (README: a run the loop died in twice is a crash)
            elif watched.proc.returncode != 0:
                self.fail(f"the loop exited {watched.proc.returncode} by itself (before its kill): {tail}")
            return
        self.kill_no += 1
        self.stats.kills[name] = self.stats.kills.get(name, 0) + 1
        watched.proc.send_signal(SIGNALS[name])
        code = watched.wait(90)
        if code is None:
            self.fail(f"SIG{name}: the loop did not exit within 90 s")
            watched.proc.kill()
            watched.wait(10)
        elif name != "KILL" and "Traceback" in watched.output():
            self.fail(f"SIG{name}: a traceback on the way out: {watched.output()[-800:]}")
        self.check_no_leftovers(watched)
        after = rows_of(ws)
        self.check_history_kept(before, after, f"after SIG{name}")
        if self.args.try_:
            self.check_edit_kept(ws, after)
        self.check_commands(ws, after)
        refused = re.search(r"(untrusted|another loop|lock|not written by).*", watched.output(), re.I)
        if refused and "Traceback" not in refused.group(0):
            pass  # looked at after the next start, which must not refuse
        print(f"  kill {self.kill_no}: SIG{name} ({trigger}) rows {len(after)} "
              f"[{', '.join(r['status'][0] for r in after)}]", flush=True)  # fmt: skip

    def after_writes(self, ws: Path, watched: Watched, k: int) -> None:
        """Return as soon as the loop has written one of the files that record what happened `k` times (each file's
        size and mtime polled every millisecond or so), or after the horizon."""
        paths = [ws / ".autoresearch" / "ledger.sqlite-wal", ws / "results.tsv", ws / ".git" / "index", ws / "train.py"]
        paths += [ws / ".git" / "refs" / "heads" / "autoresearch" / "fuzz"]

        def stamps() -> list[tuple[int, int]]:
            out = []
            for path in paths:
                try:
                    st = path.stat()
                    out.append((st.st_mtime_ns, st.st_size))
                except OSError:
                    out.append((0, 0))
            return out

        seen, writes = stamps(), 0
        end, tick = time.monotonic() + self.args.horizon, 0
        while time.monotonic() < end and watched.proc.poll() is None:
            now = stamps()
            writes += sum(a != b for a, b in zip(seen, now, strict=True))
            seen = now
            if writes >= k:
                return
            tick += 1
            if tick % 100 == 0:
                watched.note_descendants()
            time.sleep(0.001)

    def finish(self, ws: Path) -> None:
        """A start that is not killed: it finishes what is in flight and `--max-experiments` more."""
        before = rows_of(ws)
        argv = self.try_args(ws) if self.args.try_ else self.run_args(self.args.finish_experiments)
        watched = self.start(ws, argv)
        code = watched.wait(self.args.finish_timeout)
        if self.args.try_ and code == 2:  # refused: its edit was measured already on this best
            self.after_try(ws, watched)
            code = 0
        self.edit = None
        if code is None:
            self.fail(f"the finishing start did not end within {self.args.finish_timeout} s")
            watched.proc.kill()
            watched.wait(10)
        elif code != 0:
            self.fail(f"the finishing start exited {code}: {watched.output()[-1500:]}")
        self.check_no_leftovers(watched, grace=10)
        after = rows_of(ws)
        self.check_history_kept(before, after, "after the finishing start")
        self.check_commands(ws, after)
        self.check_final(ws, after)
        self.stats.experiments += len(after)

    def run(self) -> Stats:
        started = time.monotonic()
        while self.kill_no < self.args.kills and time.monotonic() - started < self.args.minutes * 60:
            self.episode += 1
            self.stats.episodes += 1
            ws = self.scratch / f"ws{self.episode}"
            make_workspace(ws, self.data, self.args.budget)
            self.edit = None
            kills = self.rng.randint(3, self.args.episode_kills)
            print(f"episode {self.episode}: {ws}, {kills} kills, workers {self.args.workers}", flush=True)
            for _ in range(kills):
                if self.kill_no >= self.args.kills:
                    break
                self.kill_once(ws)
            self.finish(ws)
            rows = rows_of(ws)
            print(f"  finished: {len(rows)} rows, {len(self.stats.violations)} violations so far, "
                  f"{self.kill_no} kills in {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
            if not self.args.keep and not [v for v in self.stats.violations if v.episode == self.episode]:
                shutil.rmtree(ws, ignore_errors=True)
        return self.stats


# ----- `--submit`: the fuzzer plays a coding agent that drives the background loop with `submit` and `wait`

VERDICT = re.compile(r"^exp (\d+) (KEEP|DISCARD|CRASH)\b", re.M)
QUEUED = re.compile(r"^exp (\d+) queued$", re.M)
# Lines of the background loop's log after which a kill lands in a short window: a submission taken, a run's start
# or end, a verdict (its git step, results.tsv, the report next), a merge of a stale win.
DRIVER_EVENTS = re.compile(r"submitted|KEEP|DISCARD|CRASH|training run|baseline|merge|resuming|dropped", re.I)
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """The background loop `submit` starts outlives its `submit` (a session of its own); orphaned, it is then this
    process's child, so that its exit status can be read (Linux only)."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@dataclass
class Agent:
    """What the coding agent the fuzzer plays knows in one workspace."""

    descriptions: dict[str, str] = field(default_factory=dict)  # every train.py it wrote -> its description
    queued: dict[int, str] = field(default_factory=dict)  # `exp N queued` printed -> the description submitted
    lost: list[tuple[str, str]] = field(default_factory=list)  # (description, train.py) given to a killed `submit`
    printed: dict[int, list[str]] = field(default_factory=dict)  # verdicts `wait` printed: id -> [status, ...]
    printed_by_killed: set[int] = field(default_factory=set)  # ... by a `wait` that was then killed
    last_killed_submit: bool = False


class SubmitFuzzer(Fuzzer):
    """`--submit`: each step runs `submit` (of one or two new edits) or `wait`, and kills it, or the background
    loop (`run --agent queue`, found by its command line and its cwd, the workspace), at a random moment."""

    def __init__(self, args: argparse.Namespace, scratch: Path):
        super().__init__(args, scratch)
        self.subreaper = become_subreaper()
        self.exits: dict[int, int] = {}  # orphans reaped here (the background loops): pid -> exit code
        self.watched: list[Watched] = []  # what the fuzzer started and has not reaped: not reaped here
        self.trees: dict[int, tuple[float, str]] = {}  # every process seen under a background loop or a command
        self.agent = Agent()

    # ----- processes

    def reap(self) -> None:
        """Reap the orphans reparented here (a background loop whose `submit` has ended, what a killed loop left)."""
        mine = {w.proc.pid for w in self.watched if w.proc.returncode is None}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children():
                with contextlib.suppress(psutil.Error, ChildProcessError):
                    if child.pid not in mine and child.status() == psutil.STATUS_ZOMBIE:
                        pid, status = os.waitpid(child.pid, os.WNOHANG)
                        if pid:
                            self.exits[pid] = os.waitstatus_to_exitcode(status)

    def driver(self, ws: Path) -> psutil.Process | None:
        """The background loop running in `ws`, if one does."""
        self.reap()
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                argv = " ".join(process.cmdline())
                if (
                    " run --agent queue" in argv
                    and process.cwd() == str(ws)
                    and process.environ().get("AUTORESEARCH_CACHE") == str(self.cache)
                    and process.status() != psutil.STATUS_ZOMBIE
                ):
                    return process
        return None

    def note_trees(self, ws: Path) -> None:
        """Note every process under the background loop and the commands running: checked after a kill."""
        roots = [w.proc.pid for w in self.watched if w.proc.poll() is None]
        if (driver := self.driver(ws)) is not None:
            roots.append(driver.pid)
        for root in roots:
            with contextlib.suppress(psutil.Error):
                for process in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        cmd = " ".join(process.cmdline())[:200]
                        self.trees.setdefault(process.pid, (process.create_time(), cmd))

    def check_no_stray(self, ws: Path, grace: float = 20) -> None:
        """Nothing runs that is neither the background loop running now nor under it: no evaluator, fork server or
        training run of a killed loop, no `submit` or `wait` of the fuzzer's."""
        end = time.monotonic() + grace
        while True:
            self.reap()
            legit: set[int] = set()
            if (driver := self.driver(ws)) is not None:
                with contextlib.suppress(psutil.Error):
                    legit = {driver.pid, *(p.pid for p in driver.children(recursive=True))}
            left = {pid: cmd for pid, (created, cmd) in self.trees.items() if pid not in legit and alive(pid, created)}
            left |= {pid: cmd for pid, cmd in marked_processes(self.cache) if pid not in legit and pid != os.getpid()}
            if not left or time.monotonic() > end:
                break
            time.sleep(0.25)
        for pid, cmd in left.items():
            self.fail(f"process {pid} left running {grace:.0f} s after the kill, not under a running loop: {cmd}")
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        self.trees = {pid: seen for pid, seen in self.trees.items() if pid in legit}

    def command(self, ws: Path, *args: str) -> Watched:
        watched = Watched([sys.executable, "-m", "autoresearch", *args], ws, self.env, self.log)
        self.watched.append(watched)
        return watched

    def finished(self, watched: Watched, timeout: float, what: str) -> int | None:
        code = watched.wait(timeout)
        if code is None:
            self.fail(f"`{what}` did not end within {timeout:.0f} s: {watched.output()[-600:]}")
            watched.proc.kill()
            code = watched.wait(10)
        self.watched.remove(watched)
        return code

    # ----- the agent

    def committed(self, ws: Path) -> str:
        return git(ws, "show", "HEAD:train.py")

    def submit_args(self, ws: Path, fresh: bool = False) -> list[str] | None:
        """Edit train.py as an agent does (a new LR on the best), or leave what is there (a change put back); None
        where the agent submits again without editing (after a killed `submit`: it should get its change back)."""
        train_py, committed = (ws / "train.py").read_text(), self.committed(ws)
        if train_py == committed and self.agent.last_killed_submit and not fresh and self.rng.random() < 0.5:
            return ["submit", "-m", "again", "--workers", "2", "--baseline-runs", "2"]
        if train_py == committed:
            lr = round(self.rng.uniform(0.01, 0.9), 4)
            train_py = re.sub(r"^LR = \S+", f"LR = {lr}", committed, count=1, flags=re.M)
            self.agent.descriptions[train_py] = f"LR {lr}"
            (ws / "train.py").write_text(train_py)
        description = self.agent.descriptions.get(train_py, "as left in train.py")
        return ["submit", "-m", description, "--workers", "2", "--baseline-runs", "2"]

    def drop_edit(self, ws: Path) -> None:
        """The agent gives up the change in train.py (refused): train.py is the best's again."""
        dropped = (ws / "train.py").read_text()
        self.agent.lost = [(d, edit) for d, edit in self.agent.lost if edit != dropped]
        (ws / "train.py").write_text(self.committed(ws))

    def ended(self, ws: Path, watched: Watched, killed: bool, edit: str) -> None:
        if watched.proc.args[3] == "submit":
            self.after_submit(ws, watched, killed, edit)
        else:
            self.after_wait(ws, watched, killed)

    def after_submit(self, ws: Path, watched: Watched, killed: bool, edit: str) -> None:
        """What a `submit` said, against what README promises."""
        out, code = watched.output(), watched.proc.returncode
        given = self.agent.descriptions.get(edit, "as left in train.py")
        if (queued := QUEUED.search(out)) is not None:
            self.agent.queued[int(queued.group(1))] = given
        elif killed:
            if watched.proc.args[5] != "again":  # a change given (not `submit` run again on the best, to get one back)
                self.agent.lost.append((given, edit))
        elif code == 2:
            train_py = (ws / "train.py").read_text()
            if "it is back in train.py" in out:  # a change a killed `submit` had taken out: the agent submits it next
                if train_py == self.committed(ws):
                    self.fail(f"`submit` said a lost change is back in train.py, but train.py is the best's: {out}")
            elif "train.py is the same as the best" in out:
                pass
            elif train_py != edit:
                self.fail(f"`submit` exited 2 but train.py does not hold its change ({given}) again: {out[-600:]}")
            elif "rejected before running" in out or "not a kept experiment" in out:
                self.drop_edit(ws)
        elif code != 0 or "Traceback" in out:
            self.fail(f"`submit` exited {code}: {out[-800:]}")
        self.agent.last_killed_submit = killed and queued is None

    def after_wait(self, ws: Path, watched: Watched, killed: bool) -> None:
        out, code = watched.output(), watched.proc.returncode
        for exp_id, status in VERDICT.findall(out):
            self.agent.printed.setdefault(int(exp_id), []).append(status.lower())
            if killed:
                self.agent.printed_by_killed.add(int(exp_id))
        if killed:
            return
        if code == 2:
            if "no loop is running" not in out or self.driver(ws) is not None:
                self.fail(f"`wait` exited 2 but not for a loop that stopped: {out[-600:]}")
        elif code != 0 or "Traceback" in out:
            self.fail(f"`wait` exited {code}: {out[-800:]}")

    # ----- the checks

    def check_agent(self, ws: Path, rows: list[dict], when: str) -> None:
        """A queued submission is never lost; a killed `submit`'s change is somewhere; no verdict printed twice."""
        by_id = {r["id"]: r for r in rows}
        for exp_id, description in self.agent.queued.items():
            row = by_id.get(exp_id)
            if row is None or row["agent"] != "submit" or row["description"] != " ".join(description.split()):
                has = row and {k: row[k] for k in ("description", "agent", "status")}
                self.fail(f"{when}: `submit` printed `exp {exp_id} queued` ({description}), the ledger has {has}")
        state = ws / ".autoresearch"
        places = {(ws / "train.py").read_text()} | {r["source"] for r in rows}
        described = {r["description"] for r in rows if r["agent"] == "submit"}
        for path in (state / "submitting").glob("*.json") if (state / "submitting").is_dir() else []:
            with contextlib.suppress(OSError, ValueError, KeyError):
                places.add(json.loads(path.read_text())["edit"])
        places |= {p.read_text() for p in (state / "unsubmitted").glob("*.py")}
        for description, edit in self.agent.lost:
            if edit not in places and description not in described:
                self.fail(f"{when}: the change given to a killed `submit` ({description}) is nowhere: not in "
                          "train.py, a row, .autoresearch/submitting/ or unsubmitted/")  # fmt: skip
        for exp_id, statuses in self.agent.printed.items():
            if len(statuses) > 1:
                killed = " (printed first by a `wait` killed then)" if exp_id in self.agent.printed_by_killed else ""
                self.fail(f"{when}: `wait` printed exp {exp_id}'s verdict {len(statuses)} times{killed}")
            row = by_id.get(exp_id)
            if row is None or row["status"] != statuses[0]:
                self.fail(f"{when}: `wait` printed exp {exp_id} {statuses[0]}, the ledger has {row and row['status']}")

    def check_all_printed(self, ws: Path, rows: list[dict]) -> None:
        """At the end: every submitted experiment (and every merge of one) has had its verdict printed, once."""
        for r in rows:
            if r["agent"] == "submit" and r["status"] in FINAL and r["id"] not in self.agent.printed:
                self.fail(f"exp {r['id']} ({r['description']}, {r['status']}) was submitted, but no `wait` printed "
                          "its verdict")  # fmt: skip
        if left := sorted((ws / ".autoresearch" / "unreported").glob("*")):
            self.fail(f"unreported markers left after the last `wait`: {[p.name for p in left]}")

    # ----- the fuzz

    def step(self, ws: Path) -> None:
        """One `submit` (sometimes two, the first unkilled) or `wait`; a kill of it or of the background loop."""
        before = rows_of(ws)
        driver = self.driver(ws)
        waiting = driver is not None and (self.agent.queued or any(r["status"] not in FINAL for r in before))
        action = "wait" if waiting and self.rng.random() < 0.5 else "submit"
        if action == "submit" and self.rng.random() < 0.25 and driver is not None:  # two edits before one wait
            argv = self.submit_args(ws, fresh=True)
            edit = (ws / "train.py").read_text()
            first = self.command(ws, *argv)
            self.finished(first, 120, "submit")
            self.after_submit(ws, first, False, edit)
        target = self.rng.choices(["command", "driver"], weights=[0.55, 0.45])[0]
        argv = self.submit_args(ws) if action == "submit" else ["wait"]
        edit = (ws / "train.py").read_text()
        name = self.rng.choices(["KILL", "INT", "TERM"], weights=[0.7, 0.15, 0.15])[0]
        trigger = self.rng.choice(["uniform", "event", "write", "write", "early"])
        offset = len(self.driver_log(ws).encode())
        started = time.monotonic()
        watched = self.command(ws, *argv)
        victim = self.moment(ws, watched, target, trigger, offset, started)
        self.note_trees(ws)
        if victim is None:  # it ended before its moment
            self.stats.exited_before_kill += 1
            code = self.finished(watched, self.args.finish_timeout, argv[0])
            self.note_trees(ws)
            if code is not None:
                self.ended(ws, watched, False, edit)
            self.check_no_stray(ws)
            return
        self.kill_no += 1
        self.stats.kills[name] = self.stats.kills.get(name, 0) + 1
        what = f"{action} ({target})" if target == "command" else f"the loop during {action}"
        self.stats.targets[what] = self.stats.targets.get(what, 0) + 1
        self.stats.triggers[trigger] = self.stats.triggers.get(trigger, 0) + 1
        log_from = len(self.driver_log(ws).encode())
        victim.send_signal(SIGNALS[name])
        if target == "driver":
            self.check_driver_exit(ws, victim, name, log_from)
        code = self.finished(watched, self.args.finish_timeout if target == "driver" else 90, argv[0])
        self.note_trees(ws)
        if code is not None:
            killed = target == "command"
            if killed and name != "KILL" and "Traceback" in watched.output():
                self.fail(f"SIG{name}: a traceback on the way out of `{argv[0]}`: {watched.output()[-800:]}")
            self.ended(ws, watched, killed, edit)
        self.check_no_stray(ws)
        after = rows_of(ws)
        self.check_history_kept(before, after, f"after SIG{name} to {what}")
        self.check_agent(ws, after, f"after SIG{name} to {what}")
        self.check_commands(ws, after, running=self.driver(ws) is not None)
        statuses = ", ".join(r["status"][0] for r in after)
        took = time.monotonic() - started
        print(f"  kill {self.kill_no}: SIG{name} to {what} ({trigger}) rows {len(after)} [{statuses}] in {took:.0f} s")

    def moment(self, ws: Path, watched: Watched, target: str, trigger: str, offset: int, started: float):
        """Wait for the moment of the kill; the process to signal (the command, or the background loop), or None if
        it ended first."""
        if target == "driver":
            while (driver := self.driver(ws)) is None and watched.proc.poll() is None:
                time.sleep(0.02)
            if driver is None:
                driver = self.driver(ws)
            if driver is None:
                return None

            def running() -> bool:
                return not gone(driver)

            horizon, early = self.args.horizon, 8.0
        else:
            driver = None

            def running() -> bool:
                return watched.proc.poll() is None

            horizon, early = (3.0, 0.8) if watched.proc.args[3] == "submit" else (10.0, 2.0)  # `wait`: while it waits
        end = started + (self.rng.uniform(0, horizon) if trigger == "uniform" else self.rng.uniform(0, early))
        if trigger == "write":
            k, writes, seen = self.rng.randint(1, 40 if driver else 8), 0, self.stamps(ws)
            end = started + horizon
        elif trigger == "event":
            k = self.rng.randint(1, 12 if driver else 2)
            end = started + horizon
        while time.monotonic() < end and running():
            if trigger == "write":
                now = self.stamps(ws)
                writes += sum(a != b for a, b in zip(seen, now, strict=True))
                seen = now
                if writes >= k:
                    break
            elif trigger == "event":
                if driver is None:
                    said = watched.output()
                else:
                    with contextlib.suppress(OSError), (ws / ".autoresearch" / "driver.log").open() as f:
                        f.seek(offset)
                        said = f.read()
                if len(DRIVER_EVENTS.findall(said) if driver else VERDICT.findall(said) + QUEUED.findall(said)) >= k:
                    break
            time.sleep(0.001 if trigger == "write" else 0.005)
        if trigger in ("write", "event"):
            time.sleep(self.rng.choice([0, 0, 0.001, 0.01, 0.05]))
        self.note_trees(ws)
        if running():
            return driver if driver is not None else watched.proc
        return None

    def stamps(self, ws: Path) -> list[tuple[int, int]]:
        """Size and mtime of what records: the ledger, results.tsv, git's index and branch, train.py, the inbox, the
        held changes, the unreported marks."""
        state = ws / ".autoresearch"
        paths = [state / "ledger.sqlite-wal", ws / "results.tsv", ws / ".git" / "index", ws / "train.py"]
        paths += [ws / ".git" / "refs" / "heads" / "autoresearch" / "fuzz", state / "inbox", state / "submitting"]
        paths += [state / "unreported"]
        out = []
        for path in paths:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return out

    def check_driver_exit(self, ws: Path, driver: psutil.Process, name: str, log_from: int) -> None:
        """A background loop signalled ends within 90 s: SIGINT 130, SIGTERM 143 (the CLI's exits for an interrupted
        loop), without a traceback in its log."""
        end = time.monotonic() + 90
        while time.monotonic() < end:
            self.reap()
            if driver.pid in self.exits or gone(driver):
                break
            time.sleep(0.05)
        else:
            self.fail(f"SIG{name}: the background loop {driver.pid} did not exit within 90 s")
            with contextlib.suppress(psutil.Error):
                driver.kill()
            return
        code = self.exits.get(driver.pid)  # None where its `submit`, still running, reaped it
        wanted = {"KILL": -9, "INT": 130, "TERM": 143}[name]
        said = self.driver_log(ws).encode()[log_from:].decode(errors="replace")
        if code is not None and code != wanted:
            self.fail(f"SIG{name}: the background loop exited {code}, not {wanted}: {said[-800:]}")
        elif name != "KILL" and "Traceback" in said:
            self.fail(f"SIG{name}: a traceback in the background loop's log: {said[-800:]}")

    def driver_log(self, ws: Path) -> str:
        try:
            return (ws / ".autoresearch" / "driver.log").read_text(errors="replace")
        except OSError:
            return ""

    def check_commands(self, ws: Path, rows: list[dict], running: bool = False) -> None:
        if not running:
            super().check_commands(ws, rows)
            return
        for command in [("status",)] + ([("show", str(self.rng.choice(rows)["id"]))] if rows else []):
            done = self.cli(ws, *command)
            if "Traceback" in done.stdout + done.stderr or done.returncode != 0:
                self.fail(f"`{' '.join(command)}` exited {done.returncode}: {(done.stdout + done.stderr)[-600:]}")

    def take_back(self, ws: Path) -> None:
        """The changes killed `submit`s left in .autoresearch/submitting/: `submit` run again on the best puts each
        back in train.py (README), and the agent gives it up."""
        held = ws / ".autoresearch" / "submitting"
        temporary = [*held.glob(".*.tmp"), *(ws / ".autoresearch" / "inbox").glob(".*.lock.tmp")]
        with contextlib.suppress(OSError):  # removed once 10 s old and unheld (inbox.STALE_TMP_S): let them age
            time.sleep(max([0.0] + [p.lstat().st_mtime + 11 - time.time() for p in temporary]))
        for _ in range(8):
            if not (held.is_dir() and (any(held.glob("*.json")) or any(held.glob(".*.tmp")))):
                return
            if (ws / "train.py").read_text() != self.committed(ws):
                self.drop_edit(ws)
            again = self.command(ws, "submit", "-m", "again", "--workers", "2", "--baseline-runs", "2")
            self.finished(again, 120, "submit")
            out = again.output()
            if again.proc.returncode != 2 or not re.search(r"it is back in train\.py|the same as the best", out):
                self.fail(f"`submit` with a killed `submit`'s change left did not put it back: {out[-800:]}")
                return
            if "back in train.py" in out and (ws / "train.py").read_text() not in self.agent.descriptions:
                self.fail(f"`submit` put back a change the agent never wrote: {out[-400:]}")
            self.drop_edit(ws)

    def finish_episode(self, ws: Path) -> None:
        """Every submission judged: by the loop running (then stopped with SIGINT, once idle), or by `run --agent
        queue` started as `wait`'s hint says; the last `wait` prints what no `wait` printed; then the checks."""
        before = rows_of(ws)
        self.take_back(ws)
        for _ in range(3):
            if self.driver(ws) is None:  # one killed leaves its worktrees (and what was in flight) to the next start
                argv = ["run", "--agent", "queue", "--plain", "--workers", "2", "--baseline-runs", "2"]
                loop = self.command(ws, *argv)
                code = self.finished(loop, self.args.finish_timeout, "run --agent queue")
                out = loop.output()
                if code == 2 and "while the baseline (exp" in " ".join(out.split()):
                    self.stats.baseline_refusals += 1
                    continue
                if code != 0:
                    self.fail(f"`run --agent queue` to finish exited {code}: {out[-1500:]}")
            last = self.command(ws, "wait")
            code = self.finished(last, self.args.finish_timeout, "wait")
            self.after_wait(ws, last, False)
            if code == 0:
                time.sleep(1)  # a poll of the loop's: it sweeps the inbox
                break
        if (driver := self.driver(ws)) is not None:
            self.note_trees(ws)
            log_from = len(self.driver_log(ws).encode())
            driver.send_signal(signal.SIGINT)
            self.check_driver_exit(ws, driver, "INT", log_from)
        self.check_no_stray(ws, grace=10)
        after = rows_of(ws)
        self.check_history_kept(before, after, "after the finish")
        self.check_agent(ws, after, "at the finish")
        self.check_all_printed(ws, after)
        if (ws / "train.py").read_text() != self.committed(ws):  # a change put back, not submitted again: dropped
            if (ws / "train.py").read_text() not in self.agent.descriptions:
                self.fail("train.py holds a change the agent never wrote")
            self.drop_edit(ws)
        self.check_commands(ws, after)
        self.check_final(ws, after)
        self.stats.experiments += len(after)

    def run(self) -> Stats:
        try:
            return self.episodes()
        finally:  # cut short (Ctrl-C): no background loop of ours lingers its 10 minutes
            for pid, cmd in marked_processes(self.cache):
                if " run --agent queue" in cmd:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGINT)

    def episodes(self) -> Stats:
        started = time.monotonic()
        while self.kill_no < self.args.kills and time.monotonic() - started < self.args.minutes * 60:
            self.episode += 1
            self.stats.episodes += 1
            ws = self.scratch / f"ws{self.episode}"
            make_workspace(ws, self.data, self.args.budget)
            self.agent = Agent()
            kills = self.rng.randint(3, self.args.episode_kills)
            print(f"episode {self.episode}: {ws}, {kills} kills, `submit --workers 2` and `wait`", flush=True)
            goal, steps = min(self.kill_no + kills, self.args.kills), 0
            while self.kill_no < goal and steps < 3 * kills and time.monotonic() - started < self.args.minutes * 60:
                steps += 1
                self.step(ws)
            self.finish_episode(ws)
            print(f"  finished: {len(rows_of(ws))} rows, {len(self.stats.violations)} violations so far, "
                  f"{self.kill_no} kills in {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
            if not self.args.keep and not [v for v in self.stats.violations if v.episode == self.episode]:
                shutil.rmtree(ws, ignore_errors=True)
        return self.stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--try", dest="try_", action="store_true", help="kill `autoresearch try` instead of `run`")
    parser.add_argument("--ray", action="store_true", help="`run --ray` on a Ray node of this machine, 2 fake GPUs")
    parser.add_argument("--submit", action="store_true", help="play a coding agent: kill `submit`, `wait`, the loop")
    parser.add_argument("--budget", type=float, default=1.0, help="each run's training budget, seconds")
    parser.add_argument("--horizon", type=float, default=40.0, help="the latest moment of a kill, s after start")
    parser.add_argument("--episode-kills", type=int, default=12, help="at most this many kills per workspace")
    parser.add_argument("--finish-experiments", type=int, default=1)
    parser.add_argument("--finish-timeout", type=float, default=300.0)
    parser.add_argument("--report-share", type=float, default=0.3, help="share of kills followed by `report`")
    parser.add_argument("--minutes", type=float, default=600.0, help="stop starting episodes after this long")
    parser.add_argument("--scratch", type=Path, default=None, help="where the workspaces go (default: a tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every workspace (default: only broken ones)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kill_fuzz.json")
    args = parser.parse_args()
    # Started in the background by a shell (`&`), this process ignores SIGINT, and so would every loop it starts
    # (Python leaves an ignored SIGINT ignored): a handler here makes theirs the default again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kill-fuzz-"))
    scratch.mkdir(parents=True, exist_ok=True)
    fuzzer = (SubmitFuzzer if args.submit else Fuzzer)(args, scratch)
    started = time.monotonic()
    if args.ray:
        fuzzer.start_ray()
    try:
        stats = fuzzer.run()
    except KeyboardInterrupt:
        stats = fuzzer.stats
    finally:
        if args.ray:
            fuzzer.stop_ray()
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "scratch": str(scratch),
        "seconds": round(time.monotonic() - started),
        "episodes": stats.episodes,
        "starts": stats.starts,
        "kills": stats.kills,
        "triggers": stats.triggers,
        "targets": stats.targets,
        "exited_before_kill": stats.exited_before_kill,
        "baseline_refusals": stats.baseline_refusals,
        "rows_at_finish": stats.experiments,
        "violations": [str(v) for v in stats.violations],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "violations"}, indent=2))
    print(f"{len(stats.violations)} violations; log {fuzzer.log}; summary {args.out}")
    return 1 if stats.violations else 0


if __name__ == "__main__":
    sys.exit(main())
