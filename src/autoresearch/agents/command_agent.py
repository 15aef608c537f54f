"""The `command` agent: any CLI coding agent (or script) that edits train.py itself.

The command runs through the shell in the workspace, in its own process group, with the prompt on stdin
and the prompt's path in AUTORESEARCH_PROMPT_FILE (<workspace>/.autoresearch/prompt.md). It edits
train.py in place and prints a one-line description as the last line of its stdout. Whether it touched
other files (or committed, staged, branched) is for the loop to check and put back (loop/watch.py); this
agent checks only that train.py changed and still compiles, and leaves it as the command left it. A command
that exits 0 without a usable train.py (an API that was down, a model that asked a question) has the end of
its output in the error, which the loop records as the reason.

Before the baseline (`preflight`), the command's program is looked up (on PATH, or as a path from the
workspace): a missing one stops the loop at once. So does an exit status of 126 or 127 later (the shell
could not find or run a program), which waiting cannot cure.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil

from autoresearch.agents import egress, namespace, places, turn_cgroups
from autoresearch.agents.base import Context, Proposal, ProposalError, Usage
from autoresearch.agents.prompt import build_prompt
from autoresearch.evaluator import memory
from autoresearch.evaluator.cores import AGENT_CPUS_ENV
from autoresearch.evaluator.tasks import run_tasks
from autoresearch.files import clear, holds, write_text_atomic
from autoresearch.orphans import die_with, kill_namespace, marked, write_pid_file
from autoresearch.workspace.workspace import MAX_TRAIN_PY_BYTES, as_read

PROMPT_ENV = "AUTORESEARCH_PROMPT_FILE"
AGENT_PID = "agent.pid"  # in the workspace's state folder, while an agent runs
TIMEOUT_S = 30 * 60.0  # a coding agent may think, read and edit for a long while; a hung one must not stall the loop
STDERR_TAIL_CHARS = 2000
DESCRIPTION_CHARS = 300
LAST_LINES_CHARS = 1 << 16  # where the description is looked for, at the end of what the agent printed
PIPE_DRAIN_S = 5.0  # after a kill, how long to wait for output still in the pipes
# What the loop keeps of each of a turn's streams, its end: a coding agent's result is its last line, and a person
# reads the tail. All of it was kept, and a turn that printed without end filled the loop's memory.
MAX_OUTPUT_BYTES = 16 << 20
END_WAIT_S = 10.0  # after a kill, how long to thaw a turn's frozen first process for it to die
# A turn's processes are the kernel's first to kill when the machine runs out of memory: the runs hold at most their
# shares (evaluator/memory.py), but a turn has no limit, and the biggest process, a neighbour's run or the loop, would
# go for it. The turn may raise it, not lower it where the loop has CAP_SYS_RESOURCE (which makes it the turn's least);
# elsewhere (a container's root too) the turn may take it back to the loop's own, and then, under a loop run as root,
# the turn's memory limit holds it (memory.agent_memory).
OOM_SCORE_ADJ = 1000
NOT_RUNNABLE = {126: "a program was found but could not be run", 127: "the shell found no such program"}
# Words before the program: they run what follows (their options, and timeout's duration, are skipped).
_WRAPPERS = {"exec", "command", "nohup", "nice", "env", "time", "timeout", "stdbuf"}
# Shell syntax and builtins: what runs then is not one program on PATH, so nothing is looked up.
_SHELL_WORDS = {"cd", "eval", "source", ".", "set", "export", "if", "for", "while", "until", "case", "!", "{", "("}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_OPTIONS_WITH_VALUE = {"-n", "-s", "-k", "-u", "-i", "-o", "-e", "--signal", "--kill-after", "--adjustment"}
_DURATION = re.compile(r"\d+(\.\d*)?[smhd]?")


class CommandAgent:
    name = "command"

    def __init__(self, command: str, timeout_s: float = TIMEOUT_S):
        self.command = command
        # What the ledger and the report name: the program, never the command line (it can carry keys).
        try:
            program = command_program(command)
        except ValueError:
            program = None
        self.model = Path(program).name if program else "shell command"
        self.timeout_s = timeout_s

    def preflight(self, workspace: Path) -> list[str]:
        """A fatal ProposalError when the command's program does not exist or cannot be run."""
        try:
            program = command_program(self.command)
        except ValueError as err:
            raise ProposalError(
                f"the command agent cannot start: {self.command!r} does not parse as a shell command ({err})",
                hint="check the quoting in --command",
                fatal=True,
            ) from None
        if program is None:
            return []
        if "/" in program:
            path = Path(program).expanduser()
            found = path if path.is_absolute() else workspace / path
            if found.is_file() and os.access(found, os.X_OK):
                return []
            why = "is not executable" if found.is_file() else "does not exist"
            raise ProposalError(
                f"the command agent cannot start: {program} {why} (--command {self.command!r}, run in {workspace})",
                hint="give the program's full path in --command, or make it executable",
                fatal=True,
            )
        if shutil.which(program) is None:
            raise ProposalError(
                f"the command agent cannot start: {program!r} is not a program on PATH (--command {self.command!r})",
                hint=f"install {program}, or give its full path in --command",
                fatal=True,
            )
        return []

    def propose(self, context: Context) -> Proposal:
        """Run the command once; its train.py is the proposal, its last stdout line the description."""
        workspace = context.workspace
        prompt = build_prompt(context, answer_format="command").as_text()
        prompt_file = write_prompt(workspace, prompt)
        env = {**os.environ, PROMPT_ENV: str(prompt_file)}
        code, stdout, stderr = run_process(
            self.command, workspace, prompt, env, self.timeout_s, f"command agent {self.command!r}", context.named
        )
        if code in NOT_RUNNABLE:
            raise ProposalError(
                f"command agent {self.command!r} exited with status {code}: {NOT_RUNNABLE[code]}; the end of its "
                f"stderr:\n{tail(stderr or stdout, STDERR_TAIL_CHARS)}",
                hint="install the agent's program or give its full path in --command",
                fatal=True,
            )
        if code != 0:
            raise ProposalError(
                f"command agent {self.command!r} exited with status {code}; the end of its stderr:\n"
                f"{tail(stderr or stdout, STDERR_TAIL_CHARS)}"
            )
        source = checked_source(workspace / "train.py", context.train_py, output_tail(stdout, stderr))
        return Proposal(_description(stdout), source)


def write_prompt(workspace: Path, prompt: str) -> Path:
    """The prompt in <workspace>/.autoresearch/prompt.md, the loop's private state; its path."""
    prompt_file = workspace / ".autoresearch" / "prompt.md"
    prompt_file.parent.mkdir(parents=True, exist_ok=True)
    clear(prompt_file)  # the last agent's turn may have left a FIFO there (a write would wait for ever), or a link
    write_text_atomic(prompt_file, prompt)
    return prompt_file


def run_process(
    command: str | list[str],
    workspace: Path,
    prompt: str,
    env: dict[str, str],
    timeout_s: float,
    who: str,
    named: Path | None = None,
) -> tuple[int, str, str]:
    """Run `command` (a shell line, or an argv list run without a shell) in the workspace, in its own process
    group, with `prompt` on stdin: exit status, and the last MAX_OUTPUT_BYTES of stdout and of stderr. ProposalError
    on timeout, after killing the whole process group, and where the kernel killed the turn for its memory; whatever
    it left running in the background is killed once it ends (all of it where `namespace.pid_namespace()` is had).
    Without the token of the loop's Ray, if it has one, nor your SSH agent. `named`: the path you named the
    workspace by (Workspace.named), whose links the namespace pins. Where the namespace has a network of its own,
    its way out is a proxy of the loop's for the turn (agents/egress.py): the hosts it refused end stderr (and the
    error's message)."""
    with _turn_network(env) as net:
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        try:
            way, env = namespace.entered(workspace, env, named, net.socket if net is not None else None)
        except ValueError as err:  # AUTORESEARCH_AGENT_PORTS or AUTORESEARCH_AGENT_WRITABLE: preflight said so
            raise ProposalError(str(err), fatal=True) from None
        groups = turn_cgroups.turn_groups(env.get(AGENT_CPUS_ENV, ""))  # a loop run as root's
        held = memory.agent_memory(env) if groups else 0
        try:
            process = subprocess.Popen(
                [*way, *argv],
                cwd=workspace,
                env=marked(env),  # a later start kills what a killed loop left (`reap`)
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, so that a kill reaches everything it started
                preexec_fn=functools.partial(_start_turn, os.getpid(), groups, run_tasks(), held),
            )
        except OSError as err:  # each place hidden from it is a word: thousands of sockets served in /tmp (red team)
            turn_cgroups.leave_unstarted(groups)
            if err.errno != errno.E2BIG:
                raise
            raise ProposalError(
                f"{who} could not start: its command, with the {len(way)} words that hide places from it (the sockets "
                "in /tmp and the like that a server listens on), is longer than the system takes"
            ) from None
        pid_file = workspace / ".autoresearch" / AGENT_PID  # a loop killed meanwhile: the next start kills the group
        streams, timed_out = (_Kept(process.stdout), _Kept(process.stderr)), False
        try:
            pid_file.parent.mkdir(exist_ok=True)
            write_pid_file(pid_file, process.pid)
            if way and (init := _namespace_init(process)) is not None:  # it can outlive the first (orphans._reap_init)
                write_pid_file(pid_file, process.pid, init)
            _feed(process.stdin, prompt)
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _end(process, groups)  # and what it left running in the background
            clear(pid_file)  # whatever the agent made of it
            over = turn_cgroups.killed_for_memory(groups, process.pid)
            turn_cgroups.leave(groups, process.pid)
        stdout, stderr = (kept.text(PIPE_DRAIN_S) for kept in streams)
        if timed_out:
            raise ProposalError(  # both streams: a coding agent's JSON events say what it was doing (the command)
                f"{who} did not finish within {timeout_s:g} s and was killed; the end of its output:\n"
                f"{output_tail(stdout, stderr)}"
            )
        if over:
            raise ProposalError(
                f"{who} went past the memory a turn may hold ({memory.amount(held)}, {memory.AGENT_MEMORY_ENV}), its "
                f"processes and what it wrote in a tmpfs together, and the kernel killed it; the end of its output:\n"
                f"{output_tail(stdout, stderr)}"
            )
        if net is not None and net.refused:
            stderr = f"{stderr}\n{net.said()}\n"
        return process.returncode, stdout, stderr


@contextlib.contextmanager
def _turn_network(env: dict[str, str]) -> Iterator[egress.Egress | None]:
    """The turn's proxy, where its namespace has a network of its own (else None), closed once the turn has ended;
    a ProposalError of the turn's ends with the hosts it refused."""
    try:
        net = egress.Egress(env) if namespace.isolates_network() else None
    except ValueError as err:  # AUTORESEARCH_AGENT_HOSTS: preflight said so
        raise ProposalError(str(err), fatal=True) from None
    if net is None:
        yield None
        return
    with net:
        try:
            yield net
        except ProposalError as err:
            if not net.refused:
                raise
            raise ProposalError(f"{err.args[0]}\n{net.said()}", err.hint, usage=err.usage, fatal=err.fatal) from None


INIT_WAIT_S = 1.0  # how long the loop waits for a turn's first process to start its PID namespace's init


def _namespace_init(process: subprocess.Popen[bytes]) -> int | None:
    """The pid of the init of the PID namespace the turn's first process (`unshare --fork`) starts, once it has; None
    where it has none within INIT_WAIT_S, or has ended."""
    deadline = time.monotonic() + INIT_WAIT_S
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children():
                return child.pid
        time.sleep(0.005)
    return None


def _start_turn(loop: int, groups: tuple[Path, ...], tasks: int, held: int) -> None:
    """In the turn's first process, before it runs anything: dead with the loop, the first the kernel kills for
    memory, in its cgroups."""
    die_with(loop)
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(str(OOM_SCORE_ADJ))
    if groups:
        turn_cgroups.enter(groups, tasks, held)


def command_program(command: str) -> str | None:
    """The program a shell command line runs first, past variable assignments and wrappers such as `env`
    or `timeout 600`; None when it starts with shell syntax or a builtin (nothing to look up). ValueError
    when the line does not parse (unbalanced quotes)."""
    words = iter(shlex.split(command))
    wrapped = False
    for word in words:
        if _ASSIGNMENT.match(word):
            continue
        if wrapped and word.startswith("-"):
            if word in _OPTIONS_WITH_VALUE:
                next(words, None)
            continue
        if wrapped and _DURATION.fullmatch(word):  # timeout's duration
            continue
        if word in _WRAPPERS:
            wrapped = True
            continue
        if word in _SHELL_WORDS or any(ch in word for ch in "$`(){};&|<>*?"):
            return None
        return word
    return None


def _end(process: subprocess.Popen[bytes], groups: tuple[Path, ...]) -> None:
    """Kill all the turn started: first its PID namespace, its init and every process in it, until the init has ended
    (`orphans.kill_namespace`: a turn that starved the init of CPU ran on past its end, red team), then the process
    group; and thaw what the turn froze (`turn_cgroups.thaw`) until the turn's first process has ended, or END_WAIT_S
    have passed."""
    deadline = time.monotonic() + END_WAIT_S
    if process.poll() is None:  # else its pid may be another process's now; and its namespace is gone with it
        with contextlib.suppress(psutil.Error):
            for init in psutil.Process(process.pid).children():
                while not kill_namespace(init, 0.2) and time.monotonic() < deadline:
                    turn_cgroups.thaw(groups, process.pid)  # a frozen init dies only thawed
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)
    while process.poll() is None and groups and time.monotonic() < deadline:
        turn_cgroups.thaw(groups, process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(0.05)


def _feed(pipe: IO[bytes] | None, prompt: str) -> None:
    """Write `prompt` to the turn's stdin and close it, in a thread: a turn that reads none of it must not stop the
    loop once the pipe is full."""

    def feed(pipe: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError), pipe:  # the turn ended, or closed its stdin
            pipe.write(prompt.encode())

    if pipe is not None:
        threading.Thread(target=feed, args=(pipe,), daemon=True).start()


class _Kept:
    """The last MAX_OUTPUT_BYTES of a turn's stream, read in a thread until the stream ends. The thread closes the
    pipe itself: something that left the turn's groups may hold it open past the turn, and `text` does not wait."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size, self.lock = 0, threading.Lock()
        self.reader = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.reader.start()

    def _read(self, pipe: IO[bytes] | None) -> None:
        if pipe is None:
            return
        with pipe, contextlib.suppress(OSError, ValueError):
            while chunk := os.read(pipe.fileno(), 1 << 16):
                with self.lock:
                    self.chunks.append(chunk)
                    self.size += len(chunk)
                    while self.size - len(self.chunks[0]) >= MAX_OUTPUT_BYTES:
                        self.size -= len(self.chunks.popleft())

    def text(self, wait: float) -> str:
        """What was kept, once the stream has ended, or after `wait` seconds."""
        self.reader.join(wait)
        with self.lock:
            kept = b"".join(self.chunks)[-MAX_OUTPUT_BYTES:]
        return kept.decode(errors="replace").replace("\r\n", "\n")


def checked_source(
    train_py: Path, before: str, output: str, usage: Usage | None = None, who: str = "the command agent"
) -> str:
    """train.py as the agent left it, if it changed and still compiles; else a ProposalError that ends with
    `output` (the end of what the agent printed) and carries `usage` (what the attempt cost)."""
    if train_py.is_symlink() and not _within_reach(train_py):
        raise ProposalError(
            f"{who} left train.py a link to {os.readlink(train_py)!r}, which leads to no file of the workspace or the "
            "folders it may write that it is shown (out of them, hidden from it, a loop of links): not read (write "
            "train.py itself)",
            usage=usage,
        )
    if not train_py.is_file():  # a directory, a FIFO (reading would wait forever), a link to /dev/zero: no file
        what = "left train.py not a file" if os.path.lexists(train_py) else "deleted train.py"
        raise ProposalError(f"{who} {what}; the end of its output:\n{output}", usage=usage)
    with train_py.open("rb") as file:
        data = file.read(MAX_TRAIN_PY_BYTES + 1)
    if len(data) > MAX_TRAIN_PY_BYTES:
        raise ProposalError(  # read no further: a link to a data file, weights trained elsewhere
            f"{who} left train.py larger than {MAX_TRAIN_PY_BYTES >> 10} KiB (the template is 17 KiB): a file that "
            "large could carry weights trained outside the budget",
            usage=usage,
        )
    try:
        source = as_read(data.decode())
    except UnicodeDecodeError as err:
        raise ProposalError(f"{who} left train.py not UTF-8 text (at byte {err.start})", usage=usage) from None
    if source == before:
        raise ProposalError(
            f"{who} exited 0 but left train.py unchanged; the end of its output:\n{output}", usage=usage
        )
    try:
        compile(source, "train.py", "exec")
    except SyntaxError as err:
        raise ProposalError(
            f"{who} left train.py invalid: {err.msg} at line {err.lineno}: {(err.text or '').strip()!r}",
            usage=usage,
        ) from None
    except ValueError as err:  # Python 3.10's word for a NUL byte
        raise ProposalError(f"{who} left train.py invalid: {err}", usage=usage) from None
    return source


def _within_reach(link: Path) -> bool:
    """Whether the file the link `link` (train.py) leads to lies in the workspace or a folder the agent may write
    (AUTORESEARCH_AGENT_WRITABLE). The loop reads it outside the agent's namespace: a link to a file hidden from the
    agent (the prepared data, the corpus it was cut from, the hub caches, Ray's token) had the loop read that file for
    it, and its first line that is no Python came back in the row's reason (red team, helper 150). Nor where it lies
    in a place hidden within them (a hub cache in the workspace: red team, helper 151)."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError):  # a loop of links (Python 3.11 and 3.12: RuntimeError), which stopped the loop
        return False
    try:
        writable = places.agent_writable(os.environ)
    except ValueError:  # refused at the preflight: nothing of it is the agent's
        writable = []
    try:
        hidden = [place.resolve() for place in places.hidden_places(link.parent, os.environ)]
    except (OSError, RuntimeError, ValueError):  # not known: not followed
        return False
    if any(holds(place, target) for place in hidden):
        return False
    return any(holds(folder.resolve(), target) for folder in (link.parent, *writable))


def _description(stdout: str) -> str:
    lines = [line.strip() for line in stdout[-LAST_LINES_CHARS:].splitlines() if line.strip()]
    if not lines:
        return "train.py edited by the command agent (it printed no description)"
    last = lines[-1]
    return last if len(last) <= DESCRIPTION_CHARS else last[: DESCRIPTION_CHARS - 3] + "..."


def output_tail(stdout: str, stderr: str) -> str:
    """The ends of both streams, labelled: an agent may say why it did nothing on either."""
    streams = (("stdout", stdout), ("stderr", stderr))
    parts = [f"[{name}] {tail(text, STDERR_TAIL_CHARS // 2)}" for name, text in streams if text.strip()]
    return "\n".join(parts) or "(none)"


def tail(text: str, limit: int) -> str:
    """The end of what an agent said, as a reason quotes it: half an emoji that its JSON escaped (`\\ud83d`, a
    JavaScript string cut within a pair) is a `?`, which the ledger and the terminal can write (red team, helper 151:
    the reason's UnicodeEncodeError stopped the loop)."""
    text = text.strip().encode("utf-8", "replace").decode()
    return text[-limit:] if text else "(empty)"
