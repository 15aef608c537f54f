"""The `autoresearch` command line: parse, dispatch, and turn errors into messages (never a traceback)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from autoresearch.cli.commands import compare, prepare_data, queue_again, run, submit, try_change, wait
from autoresearch.cli.parser import parse
from autoresearch.errors import AutoresearchError
from autoresearch.files import absolute_entries
from autoresearch.visible import visible

_NOT_ALLOWED = {errno.EROFS, errno.EACCES, errno.EPERM}  # what a file system or its owner refuses
# What the system ran short of or failed at, where the loop asked nothing wrong of it
_SYSTEMS = {errno.ENOMEM, errno.EIO, errno.ENFILE, errno.EMFILE, errno.ENOSPC, errno.EDQUOT, errno.ESTALE, errno.EFBIG,
            errno.ENODEV, errno.ENXIO, errno.ENOLCK}  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`), taken as Ctrl-C: the loop stops its runs, removes what they left and writes the
    report, where the default action would end it at once with a stale report.md."""


class HungUp(Terminated):
    """SIGHUP (the terminal closed, an SSH connection dropped), taken as SIGTERM: it ended the loop at once, its report
    stale and what its runs left there until the next start. What it prints to the terminal goes nowhere (it is gone:
    a write would fail, and the loop stop half way); to a file or a pipe (`run > night.log &`), as ever."""


def _terminated(signum: int, frame) -> None:
    if signum == signal.SIGHUP:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
            if os.isatty(fd):
                os.dup2(devnull, fd)
        os.close(devnull)
        raise HungUp
    raise Terminated


def configure_logging() -> None:
    """A library module's warning reads as the CLI's own do ("warning: ..."), without the module's name."""
    for level in (logging.WARNING, logging.ERROR):
        logging.addLevelName(level, logging.getLevelName(level).lower())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


def entry() -> int:
    """The command line (`autoresearch`, `python -m autoresearch`): `main`, without the working directory on
    sys.path (`drop_working_directory`)."""
    drop_working_directory()
    return main()


def drop_working_directory() -> None:
    """Take the working directory off sys.path, unless PYTHONPATH names it by its absolute path. `python -m` puts it
    first, and so does a relative PYTHONPATH entry (`.`, or an empty one: `export PYTHONPATH=$PYTHONPATH:/x`). It is
    often the workspace, where an agent writes: a `matplotlib/` it left there was imported by the loop itself at its
    first plot, outside any namespace (red team). The package is imported already; what it imports later comes from
    the environment's folders."""
    try:
        here = os.path.realpath(os.getcwd())
    except FileNotFoundError:  # removed: nothing is imported from it
        return
    chosen = {os.path.realpath(d) for d in absolute_entries(os.environ.get("PYTHONPATH", ""))}
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here or os.path.realpath(p) in chosen]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    configure_logging()
    # One ignored (nohup-like) stays ignored; only the main thread may set a handler (main() called on another
    # thread, as tests and embedders do, leaves signals alone).
    main_thread = threading.current_thread() is threading.main_thread()
    taken = [s for s in (signal.SIGTERM, signal.SIGHUP) if main_thread and signal.getsignal(s) == signal.SIG_DFL]
    for signum in taken:
        signal.signal(signum, _terminated)
    try:
        return _main(args, Console(stderr=True, emoji=False))  # `:ok:` in a path is no emoji
    finally:
        for signum in taken:  # main() called in-process leaves the handlers as they were
            signal.signal(signum, signal.SIG_DFL)


def typed(program: str, *args: str) -> str:
    """The command line that runs `program` (this interpreter, or this package's command) with `args` from a shell
    here: by its name where PATH finds this one, else by its path (a venv not activated: `autoresearch` was not found,
    `python` was another Python, without torch)."""
    ours = Path(sys.executable) if program == "python" else Path(sys.executable).with_name(program)
    found = shutil.which(program)  # in the same folder: a venv's python is a link to the one every venv links to
    if found is not None and ours.exists() and Path(found).absolute().parent == ours.absolute().parent:
        return shlex.join([program, *args])
    if program != "python" and not ours.exists():
        return shlex.join([sys.executable, "-m", "autoresearch", *args])
    return shlex.join([str(ours), *args])


def _main(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.command == "prepare":
            prepare_data(args, console)
        elif args.command == "init":
            from autoresearch.config.presets import default_preset_name, get_preset
            from autoresearch.workspace.init import check_init, create_workspace

            check_init(args.directory, get_preset(args.preset or default_preset_name()), args.budget, args.tag)
            preset, dataset, data_dir = prepare_data(args, console)
            branch = create_workspace(args.directory, preset, dataset, data_dir, args.budget, args.tag)
            console.print(
                f"[green]workspace ready[/] in {escape(str(args.directory))} on branch {escape(branch)}: "
                f"cd there and run `{typed('autoresearch', 'run')}` (or `{typed('python', 'train.py')}` for one "
                "training run)",
                soft_wrap=True,
            )
        elif args.command == "run":
            run(args, console)
        elif args.command == "try":
            try_change(args, console)
        elif args.command == "submit":
            submit(args, console)
        elif args.command == "wait":
            wait(args, console)
        elif args.command == "status":
            from autoresearch.loop.status import status_text
            from autoresearch.workspace.workspace import Workspace

            print(visible(status_text(Workspace(args.workspace))))
        elif args.command == "report":
            from autoresearch.report import make_report
            from autoresearch.workspace.workspace import Workspace

            ws = Workspace(args.workspace)
            png, md = make_report(ws.root, stopped=not ws.is_locked())
            console.print(f"wrote {md} and {png}", markup=False, highlight=False)
        elif args.command in ("show", "diff"):
            print(compare(args))
        elif args.command == "web":
            from autoresearch.web.serve import serve
            from autoresearch.workspace.workspace import Workspace

            serve(Workspace(args.workspace), args.host, args.port, lambda text: print(visible(text), flush=True))
        elif args.command == "rebuild-ledger":
            from autoresearch.loop.rebuild import not_recovered, rebuild
            from autoresearch.loop.recovery import put_back_turn
            from autoresearch.workspace.disk import disk_full_is_an_error
            from autoresearch.workspace.workspace import Workspace

            ws = Workspace(args.workspace)
            with ws.lock():  # what a turn cut short left first: an agent's commit is no experiment
                if not args.force and (count := _readable_rows(ws.root)):
                    raise AutoresearchError(
                        f"the ledger reads fine ({count} experiments): rebuild-ledger is for one lost, emptied or "
                        "corrupt",
                        hint="rebuilt, it would hold only what results.tsv, git and the runs' results keep (crash "
                        "reasons, agents, tokens and cost, timings would be lost); --force rebuilds it anyway, "
                        "keeping the present file beside it",
                    )
                with disk_full_is_an_error("rebuilding the ledger", "run `autoresearch rebuild-ledger` again"):
                    put_back_turn(ws, lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True))
                    rows, moved, skipped = rebuild(ws.root, ws.git)
                    lost = not_recovered(ws.root)
            kept = f"; the old file is {moved}" if moved else ""
            console.print(f"rebuilt the ledger: {rows} experiments from results.tsv and git{kept}", markup=False)
            if skipped:
                console.print(
                    f"[yellow]skipped results.tsv lines {', '.join(map(str, skipped))}[/]: not lines the loop writes "
                    "(or no experiment of theirs left in git); each experiment's commit was taken from git instead"
                )
            for note in lost:
                console.print(f"[yellow]not recovered:[/] {escape(note)}", highlight=False, soft_wrap=True)
    except AutoresearchError as exc:
        return _error(console, _where_to_run(exc, args))
    except KeyboardInterrupt as exc:
        return _interrupted(console, exc, args)
    except RuntimeError as exc:
        if str(exc) == "can't start new thread":
            return _error(console, _no_task(exc))
        # A Ctrl-C that lands while a thread lock of Python's is being taken back (inside threading's Condition.wait)
        # leaves it unheld, and its release raises this in place of the KeyboardInterrupt; every cleanup of ours
        # runs on any exception (finally, `except BaseException`), so it is the Ctrl-C, shown as one.
        if not isinstance(exc.__context__, KeyboardInterrupt) or "release unlocked lock" not in str(exc):
            raise
        return _interrupted(console, exc.__context__, args)
    except BrokenPipeError:  # `autoresearch status | head -1`: the reader has gone; as git does, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 141
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return _error(console, _no_task(exc))
        what = f"{exc.strerror}: {exc.filename}" if exc.filename and exc.strerror else str(exc)
        if exc.errno in _SYSTEMS:  # out of memory, an I/O error: a message, not a traceback
            name = errno.errorcode[exc.errno]
            hint = f"the system refused it ({name}); nothing the loop recorded is lost: once that is dealt with, give "
            return _error(console, AutoresearchError(what, hint=hint + "the command again"))
        if exc.errno not in _NOT_ALLOWED:  # another: a bug of ours, whose traceback is what to report
            raise
        # a read-only mount, another user's file: the person's to fix, so a message and no traceback
        error = AutoresearchError(
            what,
            hint="autoresearch writes its state, results.tsv and reports into the workspace and prepared data into "
            "the cache: run it where both may be written (nothing was lost)",
        )
        return _error(console, error)
    return 0


def _no_task(exc: Exception) -> AutoresearchError:
    """The system refused the loop a process or a thread: your limit of them (a run of a loop not run as root counts
    toward it: evaluator/tasks.py), or the machine's, was reached."""
    return AutoresearchError(
        f"the system refused autoresearch a new process or thread ({exc}): your limit of them (`ulimit -u`), which a "
        "run's count toward under a loop not run as root, or the machine's, was reached",
        hint="raise `ulimit -u` (nproc in limits.conf) or stop some of your processes, then run again: nothing was "
        "lost (what was in flight is trained again)",
    )


def _interrupted(console: Console, exc: KeyboardInterrupt, args: argparse.Namespace) -> int:
    if args.command == "run" and getattr(args, "agent", None) == "queue":  # most often the loop `submit` started
        # One line, commands and all: in a pipe (a log, an agent's tool) the console wraps at 80 columns
        console.print(f"interrupted: {queue_again(args)} resumes where it stopped", markup=False, soft_wrap=True)
    elif args.command == "web":  # nothing to resume: it only reads
        console.print("stopped the web view")
    elif args.command in ("prepare", "init") and args.force:  # the same command, with --force, starts over
        console.print("interrupted: run it again without --force to resume where it stopped")
    else:
        console.print("interrupted: run the same command again to resume where it stopped")
    by = signal.SIGHUP if isinstance(exc, HungUp) else signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    return 128 + by


def _readable_rows(root: Path) -> int:
    """How many experiments the workspace's ledger holds, where it reads fine; 0 where it is missing, empty or
    corrupt, or written by another hand (what `rebuild-ledger` is for). DiskFullError where a full disk keeps it
    from being read: a healthy ledger rebuilt would lose crash reasons, agents, tokens and cost (red team)."""
    import sqlite3

    from autoresearch.loop.ledger import Ledger, ledger_path
    from autoresearch.workspace.disk import DiskFullError

    if not ledger_path(root).is_file():
        return 0
    try:
        ledger = Ledger(root)
    except DiskFullError:
        raise
    except (AutoresearchError, sqlite3.Error):
        return 0
    try:
        ledger.verify()  # one another hand wrote is what it is for too: the loop's refusal says to run it
        return len(ledger.all())
    except DiskFullError:
        raise
    except (AutoresearchError, sqlite3.Error, ValueError, TypeError):
        return 0
    finally:
        ledger.close()


def _where_to_run(exc: AutoresearchError, args: argparse.Namespace) -> AutoresearchError:
    """`exc`, saying where the commands its text names run, where `--workspace` named a workspace other than the
    folder you are in: pasted here, `autoresearch show 8` finds no workspace, and `git checkout train.py` no
    repository, or another of yours (a user's walk)."""
    given = getattr(args, "workspace", None)
    if given is None or not any(f"`{word} " in str(exc) for word in ("autoresearch", "git")):
        return exc
    from autoresearch.workspace.workspace import named_path

    try:
        if not (given / "autoresearch.json").is_file() or os.path.samefile(given, "."):
            return exc
    except OSError:
        return exc
    where = f"`cd {shlex.quote(str(named_path(given)))}` first"
    hint = f"{exc.hint}; these commands run in the workspace: {where}" if exc.hint else None
    return AutoresearchError(Exception.__str__(exc), hint or f"the commands above run in the workspace: {where}")


def _error(console: Console, exc: AutoresearchError) -> int:
    # its text is no markup; unwrapped, so that a log (`wait` reads the background loop's) holds it whole
    console.print(f"[red]error:[/] {escape(visible(str(exc)))}", highlight=False, soft_wrap=True)
    return 2
