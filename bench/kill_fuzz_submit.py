"""The kill fuzz's `--submit` mode (bench/kill_fuzz.py runs it):

    PYTHONPATH=$PWD/src .venv/bin/python bench/kill_fuzz.py --submit --kills 40 --minutes 14 --seed 7

`--submit` plays a coding agent that keeps two workers busy (README's `submit` and `wait`): each step writes an edit
of train.py (a new LR on the best; sometimes two, the first submitted unkilled before the second), runs
`autoresearch submit -m ... --workers 2` (which starts the background loop, `run --agent queue`, when none runs) or
`autoresearch wait`, and signals that command or the background loop (found by its command line and its cwd, the
workspace; its exit status read as this process is made the orphans' reaper) at a moment drawn the same four ways
(the events: lines of `.autoresearch/driver.log`, or of the command's output; the writes: also the inbox, the held
changes and the unreported marks). After a `submit` killed, the agent sometimes runs `submit` again on the best,
which must put the change back. After each kill, besides the checks of bench/kill_fuzz.py: a background loop
signalled exits (SIGINT 130, SIGTERM 143, no traceback in its log); nothing runs that is not under the loop running
now; every `exp N queued` is a row of that submission; a killed `submit`'s change is in train.py, a row,
`.autoresearch/submitting/` or `unsubmitted/`; no verdict printed twice by `wait`, and each as the ledger has it; a
`submit` that exits 2 leaves its change in train.py; a `wait` that exits 2 does so for a loop that stopped. At the
end of an episode: the held changes put back by `submit` (then given up), `run --agent queue` where no loop runs,
the last `wait`, the loop stopped with SIGINT; then every submitted experiment (and merge of one) has had its
verdict printed once, and the final checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from kill_fuzz import FINAL, SIGNALS, Fuzzer, Stats, Watched, alive, git, marked_processes, rows_of

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

    def recording(self, ws: Path) -> list[Path]:
        """Also the inbox, the held changes and the unreported marks."""
        state = ws / ".autoresearch"
        return [*super().recording(ws), state / "inbox", state / "submitting", state / "unreported"]

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
            ws, kills = self.next_episode()
            self.agent = Agent()
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
