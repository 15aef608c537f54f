"""Kill the real loop at random moments, many times, and check after each kill what a user relies on.

    PYTHONPATH=$PWD/src .venv/bin/python bench/kill_fuzz.py --kills 200 --seed 1 --workers 1

Each episode makes a fresh workspace (the tests' bigram train.py, a budget of `--budget` seconds on the tiny
preset), then repeatedly starts `autoresearch run --agent tune --plain --baseline-runs 2` (or `try` on an edit, or
`run --ray` on a Ray node of this machine with `--ray-gpus` pretend GPUs, 2 by default; with 6 the baseline trains 4
seeds and 2 changes wait beside it for its verdict), and signals it after a random delay: SIGKILL mostly, SIGINT
and SIGTERM sometimes. The delay is either drawn over the whole life of a start, or taken a few
milliseconds after a random event line of `--plain` (a verdict, a run's start, the agent's turn), so that the short
windows between a ledger write and a git move are hit too. After each kill: no process the killed loop started is
left running; `status`, `report` and `show` run without a traceback; the rows written before the kill are all there,
unchanged where final; what was in flight is taken up again under its id. At the end of an episode a start that is
not killed finishes (`--max-experiments`), and then: every row final, ids consecutive, no proposal judged twice,
results.tsv agrees with the ledger, the branch head is the last kept row's commit with train.py equal to it, git
status clean, no worktree or stray file left.

`--submit` plays a coding agent that drives the loop with `submit` and `wait` (bench/kill_fuzz_submit.py).

Writes a JSON summary (`--out`); exits 1 if any invariant broke. One fuzzer at a time on a small machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
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


def baseline_refused(watched: Watched) -> bool:
    """Whether a start stopped on a baseline that kills before it had crashed (the loop died in it twice)."""
    return "while the baseline (exp" in " ".join(watched.output()[-800:].split())


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
                if changed == ["val_bpb"] and self.measured_again(old, new):
                    changed = []  # a kept row measured again (loop/scheduler.py): more runs, and their mean
                if changed:
                    self.fail(f"{when}: final row {old['id']} changed {changed}: {old['status']} -> {new['status']}")
            elif (old["description"], old["kind"]) != (new["description"], new["kind"]):
                self.fail(f"{when}: in-flight row {old['id']} became another: {old['description']!r} -> "
                          f"{new['description']!r}")  # fmt: skip
            elif old["commit"] and new["commit"] != old["commit"] and not self.moved_onto_a_keep(old, new, by_id):
                self.fail(f"{when}: in-flight row {old['id']} moved commit {old['commit'][:8]} -> {new['commit']}")

    @staticmethod
    def measured_again(old: dict, new: dict) -> bool:
        """Whether a kept row's val_bpb changed as measuring it again changes it: its runs are the old ones and more,
        and its val_bpb their mean."""
        before, after = json.loads(old["runs"]), json.loads(new["runs"])
        return (
            new["status"] == "keep"
            and after[: len(before)] == before
            and len(after) > len(before)
            and math.isclose(new["val_bpb"], statistics.fmean(after))
        )

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
        """A Ray node of this machine with `--ray-gpus` pretend GPUs (the runs train on the CPU), in the loops'
        environment, so that its workers run the package under test and are marked with the fuzzer's cache.
        `--ray-copies`: the node trains from copies of the data sent through Ray's object store, as a node without
        the workspace does. A CPU per GPU, however few the machine has: a run is a task of one of each."""
        gpus = self.args.ray_gpus
        port = 20000 + self.rng.randint(0, 9999)
        env = {**self.env, "AUTORESEARCH_RAY_COPY": "1"} if self.args.ray_copies else self.env
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
             f"--num-cpus={max(2, gpus)}", f"--num-gpus={gpus}", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, check=True, capture_output=True, timeout=120,
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
            if watched.proc.returncode == 2 and baseline_refused(watched):
                self.stats.baseline_refusals += 1  # by design (README: a run the loop died in twice is a crash)
            elif watched.proc.returncode != 0:
                tail = watched.output()[-800:]
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
        print(f"  kill {self.kill_no}: SIG{name} ({trigger}) rows {len(after)} "
              f"[{', '.join(r['status'][0] for r in after)}]", flush=True)  # fmt: skip

    def recording(self, ws: Path) -> list[Path]:
        """The files that record what happened: the ledger, results.tsv, git's index and branch, train.py."""
        return [ws / ".autoresearch" / "ledger.sqlite-wal", ws / "results.tsv", ws / ".git" / "index", ws / "train.py",
                ws / ".git" / "refs" / "heads" / "autoresearch" / "fuzz"]  # fmt: skip

    def stamps(self, ws: Path) -> list[tuple[int, int]]:
        """The mtime and size of each of `recording(ws)` ((0, 0) for one missing)."""
        out = []
        for path in self.recording(ws):
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return out

    def after_writes(self, ws: Path, watched: Watched, k: int) -> None:
        """Return as soon as the loop has written one of the files that record what happened `k` times (each file's
        size and mtime polled every millisecond or so), or after the horizon."""
        seen, writes = self.stamps(ws), 0
        end, tick = time.monotonic() + self.args.horizon, 0
        while time.monotonic() < end and watched.proc.poll() is None:
            now = self.stamps(ws)
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
        elif code == 2 and not self.args.try_ and baseline_refused(watched):
            self.stats.baseline_refusals += 1  # the kills before it crashed the baseline: the next start measures anew
            self.check_no_leftovers(watched, grace=10)
            self.check_history_kept(before, rows_of(ws), "after a start refused on the baseline")
            self.finish(ws)
            return
        elif code != 0:
            self.fail(f"the finishing start exited {code}: {watched.output()[-1500:]}")
        self.check_no_leftovers(watched, grace=10)
        after = rows_of(ws)
        self.check_history_kept(before, after, "after the finishing start")
        self.check_commands(ws, after)
        self.check_final(ws, after)
        self.stats.experiments += len(after)

    def next_episode(self) -> tuple[Path, int]:
        """The next episode's fresh workspace, and how many kills it gets."""
        self.episode += 1
        self.stats.episodes += 1
        ws = self.scratch / f"ws{self.episode}"
        make_workspace(ws, self.data, self.args.budget)
        return ws, self.rng.randint(3, self.args.episode_kills)

    def run(self) -> Stats:
        started = time.monotonic()
        while self.kill_no < self.args.kills and time.monotonic() - started < self.args.minutes * 60:
            ws, kills = self.next_episode()
            self.edit = None
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--try", dest="try_", action="store_true", help="kill `autoresearch try` instead of `run`")
    parser.add_argument("--ray", action="store_true", help="`run --ray` on a Ray node of this machine, fake GPUs")
    parser.add_argument("--ray-copies", action="store_true", help="--ray, the node training from copies of the data")
    parser.add_argument(
        "--ray-gpus", type=int, default=2, help="--ray: the node's pretend GPUs (6: 4 baseline seeds, 2 changes beside)"
    )
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
    args.ray = args.ray or args.ray_copies
    # Started in the background by a shell (`&`), this process ignores SIGINT, and so would every loop it starts
    # (Python leaves an ignored SIGINT ignored): a handler here makes theirs the default again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kill-fuzz-"))
    scratch.mkdir(parents=True, exist_ok=True)
    if args.submit:
        from kill_fuzz_submit import SubmitFuzzer

        fuzzer = SubmitFuzzer(args, scratch)
    else:
        fuzzer = Fuzzer(args, scratch)
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
