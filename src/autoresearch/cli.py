"""The `autoresearch` command line."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from autoresearch.errors import AutoresearchError

_NOT_ALLOWED = {errno.EROFS, errno.EACCES, errno.EPERM}  # what a file system or its owner refuses


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="apparatus preset: h100 or tiny (default: h100 with CUDA, else tiny)")
    parser.add_argument(
        "--dataset",
        help="python-source, local:PATH, climbmix or fineweb-edu (default: climbmix with CUDA, else python-source)",
    )
    parser.add_argument(
        "--cache-dir", help="prepared data lives here (default: $AUTORESEARCH_CACHE or ~/.cache/autoresearch)"
    )
    parser.add_argument("--root", type=Path, help="python-source only: read this directory tree instead")
    parser.add_argument("--shards", type=int, help="climbmix / fineweb-edu only: how many training shards to download")
    parser.add_argument("--force", action="store_true", help="rebuild the tokenizer and shards even if prepared")


def _workspace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", type=Path, default=Path("."), help="the workspace (default: this directory)")


def _judging_options(parser: argparse.ArgumentParser) -> None:
    seeds = "seeds the baseline is trained with (default 3; with several workers, one per worker up to 8 if more)"
    parser.add_argument("--baseline-runs", type=int, default=3, help=seeds)
    parser.add_argument("--timeout", type=float, help="hard limit per training run in s (default 1.5 x budget + 180)")


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", help="one worker per GPU: `all` or ids like 0,1,3 (each run sees only its GPU)")
    parser.add_argument("--workers", type=int, help="CPU only: N workers sharing the cores (default: one worker)")
    parser.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help="every run a Ray task needing one GPU, on the cluster at ADDRESS (or $RAY_ADDRESS; none: this machine)",
    )  # fmt: skip
    parser.add_argument("--accelerator", help="with --ray: the GPU type each run needs (Ray's names, e.g. H100)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoresearch")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from autoresearch import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch", description="An autonomous research loop over train.py.")
    parser.add_argument("--version", action="version", version=f"autoresearch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="download or read a dataset, train the tokenizer, write token shards")
    _data_options(prepare)

    init = sub.add_parser("init", help="make a research workspace: a git repository with train.py and program.md")
    init.add_argument("directory", type=Path)
    from autoresearch.config.apparatus import budget_argument  # checks it before any work: 1 s to 1 day

    init.add_argument("--budget", type=budget_argument, help="training seconds per experiment (default: the preset's)")
    init.add_argument("--tag", help="the branch is autoresearch/<tag> (default: today's date, e.g. nov22)")
    _data_options(init)

    run = sub.add_parser("run", help="run the research loop in a workspace (Ctrl-C stops; run again to resume)")
    run.add_argument(
        "--agent",
        default="tune",
        help="tune (default, offline), anthropic, openai, aider, claude-code, codex, command (any other CLI agent) "
        "or queue (only what `submit` queues)",
    )
    run.add_argument("--model", help="the LLM for anthropic, openai, aider, claude-code or codex")
    run.add_argument("--command", dest="agent_command", help="for --agent command: the coding agent's command line")
    run.add_argument("--max-experiments", type=int, help="stop after this many experiments (default: never)")
    run.add_argument("--hours", type=float, help="stop after this many hours (default: never)")
    run.add_argument("--linger", type=float, default=0.0, help=argparse.SUPPRESS)  # --agent queue: wait for more
    run.add_argument("--plain", action="store_true", help="one line per event instead of the live view")
    _judging_options(run)
    _worker_options(run)
    _workspace_option(run)

    submit = sub.add_parser("submit", help="queue the working tree's train.py as an experiment; print its id at once")
    submit.add_argument("-m", "--message", required=True, help="one line: what you changed")
    _judging_options(submit)
    _worker_options(submit)
    _workspace_option(submit)

    wait = sub.add_parser("wait", help="block until experiments are judged; one verdict line each")
    unreported = "experiment ids (default: every submitted one whose verdict no `wait` has printed yet)"
    wait.add_argument("ids", nargs="*", type=int, help=unreported)
    _workspace_option(wait)

    try_ = sub.add_parser("try", help="judge the train.py in the working tree as one experiment (for coding agents)")
    try_.add_argument("-m", "--message", required=True, help="one line: what you changed")
    _judging_options(try_)
    _workspace_option(try_)

    status = sub.add_parser("status", help="best so far, counts, what is running")
    _workspace_option(status)

    report = sub.add_parser("report", help="write progress.png and report.md")
    _workspace_option(report)

    show = sub.add_parser("show", help="one experiment: status, val_bpb, why, and its train.py diff against its parent")
    show.add_argument("experiment", type=int, help="the experiment's number")
    _workspace_option(show)

    diff = sub.add_parser("diff", help="two experiments' results and the train.py diff from the first to the second")
    diff.add_argument("a", type=int, help="the first experiment's number")
    diff.add_argument("b", type=int, help="the second experiment's number")
    _workspace_option(diff)

    rebuild = sub.add_parser("rebuild-ledger", help="make a lost or corrupt ledger again from results.tsv and git")
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="rebuild a ledger that reads fine too (what only it holds is lost; the file is kept beside it)",
    )
    _workspace_option(rebuild)
    return parser


def _prepare(args: argparse.Namespace, console: Console):
    from autoresearch.config.paths import cache_root
    from autoresearch.config.presets import default_dataset_name, default_preset_name, get_preset
    from autoresearch.data.prepare import prepare

    preset = get_preset(args.preset or default_preset_name())
    dataset = args.dataset or default_dataset_name()
    out = prepare(
        dataset,
        preset,
        cache_root(args.cache_dir),
        root=args.root,
        shards=args.shards,
        force=args.force,
        console=console,
    )
    return preset, dataset, out


def _loop(args: argparse.Namespace, reporter):
    from autoresearch.loop.engine import LoopConfig, ResearchLoop
    from autoresearch.loop.executor import LocalExecutor
    from autoresearch.workspace.workspace import Workspace

    if args.baseline_runs < 2:
        raise AutoresearchError("--baseline-runs must be at least 2: one run cannot measure the noise")
    from autoresearch.evaluator import sandbox

    config = LoopConfig(baseline_runs=args.baseline_runs, timeout=args.timeout)
    loop = ResearchLoop(Workspace(args.workspace), LocalExecutor(), reporter, config)
    if why := sandbox.unavailable_reason():
        reporter.message(
            f"warning: train.py runs unconfined here ({why}). Its score is still computed outside it and the "
            "workspace is checked after every run, but it can read what you can (the validation data too). "
            "To confine it: install bubblewrap and allow unprivileged user namespaces"
        )
    return loop


def _run(args: argparse.Namespace, console: Console) -> None:
    from autoresearch.agents.factory import make_agent
    from autoresearch.loop.live import LiveReporter
    from autoresearch.loop.reporter import PlainReporter, console_echo
    from autoresearch.loop.workers import devices, require_gpus
    from autoresearch.orphans import remove_left_boxes
    from autoresearch.report import make_report

    for option, value in (("--max-experiments", args.max_experiments), ("--hours", args.hours)):
        if value is not None and value < 0:  # 0: finish what is in flight, start nothing new
            raise AutoresearchError(f"{option} cannot be negative (got {value:g}); leave it out to run until stopped")
        if value is not None and value != value:  # nan: no time is ever past it, so the loop never stopped
            raise AutoresearchError(f"{option} takes a number (got {value:g}); leave it out to run until stopped")
    if args.accelerator and args.ray is None:  # it would be dropped without a word: runs on whatever is here
        raise AutoresearchError("--accelerator goes with --ray", hint="e.g. --ray --accelerator H100")
    if args.model and args.agent in ("tune", "command", "queue"):  # dropped without a word, too
        raise AutoresearchError(
            f"--model goes with an LLM agent, not --agent {args.agent}",
            hint="e.g. --agent anthropic --model claude-sonnet-4-6; with --agent command, name it in --command",
        )
    if args.agent_command and args.agent != "command":
        raise AutoresearchError(
            f"--command goes with --agent command, not --agent {args.agent}",
            hint='e.g. --agent command --command "claude -p"',
        )
    require_gpus(args.gpus)
    found = devices(args.gpus, args.workers)
    agent = None if args.agent == "queue" else make_agent(args.agent, args.model, args.agent_command)
    name = agent.name if agent is not None else "submitted experiments"
    live = not args.plain and console.is_terminal
    reporter = LiveReporter(console, f"autoresearch: {name}") if live else PlainReporter(console_echo(console))
    loop = _loop(args, reporter)
    if live:
        reporter.runs_dir = loop.ws.state / "runs"  # where the runs' logs are: the clock follows them
        reporter.resume(loop.ledger.all())
    ran = False
    try:
        with loop.ws.lock():
            ran = True
            if live:
                with reporter:
                    _drive(loop, agent, found, args)
            else:
                _drive(loop, agent, found, args)
    finally:
        loop.executor.close()
        remove_left_boxes(loop.ws.state)  # what the evaluators started ahead for runs that never came
        if ran and loop.ledger.all():  # not a `run` refused beside another: that loop writes its own report
            png, md = make_report(loop.ws.root)
            history = loop.ws.root / "results.tsv"  # one line, also in a log
            console.print(f"report: {md} and {png}; history in {history}", highlight=False, soft_wrap=True)


def _drive(loop, agent, found, args: argparse.Namespace) -> None:
    """One worker, nothing submitted: the loop as it always ran. Else the scheduler and its workers (on Ray's
    GPUs with --ray)."""
    from autoresearch.loop import activity
    from autoresearch.loop.scheduler import needs_scheduler, run_workers

    if getattr(args, "ray", None) is not None:
        from autoresearch.loop.ray_executor import RayExecutor, Shipment, connect, open_to_agent, ray_devices

        if args.gpus or args.workers:
            raise AutoresearchError("give --ray or --gpus/--workers, not both", hint="Ray picks each run's GPU")

        found = ray_devices(connect(args.ray or None))
        if warning := open_to_agent(agent):
            loop.reporter.message(warning)
        shipment = Shipment()  # what nodes without the workspace need, sent once for all the workers
        executor_for = lambda _device: RayExecutor(args.accelerator, shipment)
        run_workers(loop, agent, found, args.max_experiments, args.hours, args.linger, executor_for)
    elif agent is not None and len(found) == 1 and not found[0].env and not needs_scheduler(loop):
        with activity.session(loop.ws.state, [found[0].label], submissions=False):  # `submit` is told at once
            loop.run(agent, args.max_experiments, args.hours)
    else:
        run_workers(loop, agent, found, args.max_experiments, args.hours, args.linger)


def _submit(args: argparse.Namespace, console: Console) -> None:
    """Queue the working tree's train.py with a running loop (started in the background if none runs); print
    `exp N queued` on stdout, within a second or two while the loop runs, whether or not a worker is free.
    train.py is the best again at once (the loop reads the branch's train.py, never the working tree's); if the
    submission is refused or no loop takes it (then withdrawn: it never trains), the change is put back."""
    import subprocess

    from autoresearch.loop.held_edits import HeldEdit, put_back_edits
    from autoresearch.loop.inbox import send
    from autoresearch.loop.workers import devices, require_gpus
    from autoresearch.workspace.workspace import Workspace

    ws = Workspace(args.workspace)
    require_gpus(args.gpus)  # a wrong --gpus is an error before anything is queued
    devices(args.gpus, args.workers)
    if (lost := put_back_edits(ws, lambda text: console.print(text, markup=False, highlight=False))) is not None:
        raise AutoresearchError(
            f"a `submit` killed before it queued its change ({lost}) had taken it out of train.py; it is back in "
            "train.py",
            hint="check it and submit it again",
        )
    source, base = ws.read_train_py(), ws.git.head()
    if source == ws.committed_train_py(base):
        raise AutoresearchError("train.py is the same as the best", hint="edit train.py first")
    edit = ws.train_py.read_bytes().decode()  # as it is on disk, line endings and all, to put back on a failure

    def start() -> subprocess.Popen:
        from autoresearch.evaluator.sandbox import module_command

        argv = [
            *module_command(sys.executable, "autoresearch"),
            "run",
            "--agent",
            "queue",
            "--plain",
            "--linger",
            "600",
        ]
        argv += ["--baseline-runs", str(args.baseline_runs), "--workspace", str(ws.root)]
        for option, value in (("--gpus", args.gpus), ("--workers", args.workers), ("--timeout", args.timeout),
                              ("--accelerator", args.accelerator)):  # fmt: skip
            argv += [option, str(value)] if value else []
        argv += ["--ray", *([args.ray] if args.ray else [])] if args.ray is not None else []
        with (ws.state / "driver.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        console.print(f"started a loop in the background (its log: {ws.state / 'driver.log'})", highlight=False)
        return proc

    held = HeldEdit(ws.state, edit, source, args.message, base)  # from here a kill loses nothing (put_back_edits)
    try:
        ws.write_train_py(ws.git.show(base, "train.py"))
        exp_id = send(ws, args.message, source, base, start)
    except BaseException:
        ws.write_train_py(edit)
        held.release()
        raise
    held.release()
    print(f"exp {exp_id} queued", flush=True)


def _wait(args: argparse.Namespace, console: Console) -> None:
    """One verdict line on stdout for each experiment, as it is judged. With no ids: every submitted experiment
    whose verdict no `wait` has printed yet."""
    from autoresearch.loop.ledger import Ledger, best_of
    from autoresearch.loop.reporter import verdict_line
    from autoresearch.loop.waiting import reported, unreported, wait_for
    from autoresearch.workspace.workspace import Workspace

    ws = Workspace(args.workspace)
    ids = args.ids or unreported(ws.state)
    if not ids:
        console.print("no submitted experiment waits to be reported (`wait N` waits for experiment N)")
        return

    def judged(exp) -> None:  # as `try` prints it: with the best now
        ledger = Ledger(ws.root)
        try:
            best = best_of(ledger.all())
        finally:
            ledger.close()
        print(verdict_line(exp, best), flush=True)
        reported(ws.state, exp.id)

    wait_for(lambda: Ledger(ws.root), ids, ws.is_locked, log=ws.state / "driver.log", judged=judged)


def _try(args: argparse.Namespace, console: Console) -> None:
    """Progress on stderr; on stdout exactly one line, the verdict on the working tree's train.py."""
    from autoresearch.loop import activity
    from autoresearch.loop.reporter import PlainReporter, console_echo, verdict_line
    from autoresearch.loop.trying import try_working_tree
    from autoresearch.orphans import remove_left_boxes

    reporter = PlainReporter(console_echo(console), hold_verdicts=True)
    loop = _loop(args, reporter)
    exp = None
    try:
        with loop.ws.lock(), activity.session(loop.ws.state, [], submissions=False):
            try:
                exp = try_working_tree(loop, args.message)
            finally:
                loop.executor.close()
                remove_left_boxes(loop.ws.state)
    finally:  # other verdicts (the baseline measured first) go with the progress, on stderr
        for other, best in reporter.held:
            if exp is None or other.id != exp.id:
                reporter.echo(verdict_line(other, best))
    print(verdict_line(exp, loop.best()), flush=True)


def _compare(args: argparse.Namespace) -> str:
    from autoresearch.report import read_experiments
    from autoresearch.report.compare import diff_text, show_text
    from autoresearch.workspace.workspace import Workspace

    ws = Workspace(args.workspace)
    experiments = read_experiments(ws.root)
    if args.command == "show":
        return show_text(ws.git, experiments, args.experiment)
    return diff_text(ws.git, experiments, args.a, args.b)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`), taken as Ctrl-C: the loop stops its runs, removes what they left and writes the
    report, where the default action would end it at once with a stale report.md."""


def _terminated(signum: int, frame) -> None:
    raise Terminated


def configure_logging() -> None:
    """A library module's warning reads as the CLI's own do ("warning: ..."), without the module's name."""
    for level in (logging.WARNING, logging.ERROR):
        logging.addLevelName(level, logging.getLevelName(level).lower())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    # One ignored (nohup-like) stays ignored; only the main thread may set a handler (main() called on another
    # thread, as tests and embedders do, leaves signals alone).
    taken = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if taken:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return _main(args, Console(stderr=True))
    finally:
        if taken:  # main() called in-process leaves the handler as it was
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _main(args: argparse.Namespace, console: Console) -> int:
    try:
        if args.command == "prepare":
            _prepare(args, console)
        elif args.command == "init":
            from autoresearch.config.presets import default_preset_name, get_preset
            from autoresearch.workspace.init import check_init, create_workspace

            check_init(args.directory, get_preset(args.preset or default_preset_name()), args.budget, args.tag)
            preset, dataset, data_dir = _prepare(args, console)
            branch = create_workspace(args.directory, preset, dataset, data_dir, args.budget, args.tag)
            console.print(
                f"[green]workspace ready[/] in {args.directory} on branch {branch}: "
                "cd there and run `autoresearch run` (or `python train.py` for one training run)"
            )
        elif args.command == "run":
            _run(args, console)
        elif args.command == "try":
            _try(args, console)
        elif args.command == "submit":
            _submit(args, console)
        elif args.command == "wait":
            _wait(args, console)
        elif args.command == "status":
            from autoresearch.loop.status import status_text
            from autoresearch.workspace.workspace import Workspace

            print(status_text(Workspace(args.workspace)))
        elif args.command == "report":
            from autoresearch.report import make_report
            from autoresearch.workspace.workspace import Workspace

            png, md = make_report(Workspace(args.workspace).root)
            console.print(f"wrote {md} and {png}")
        elif args.command in ("show", "diff"):
            print(_compare(args))
        elif args.command == "rebuild-ledger":
            from autoresearch.loop.rebuild import rebuild
            from autoresearch.loop.recovery import put_back_turn
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
                put_back_turn(ws, lambda text: console.print(text, markup=False, highlight=False))
                rows, moved, skipped = rebuild(ws.root, ws.git)
            kept = f"; the old file is {moved}" if moved else ""
            console.print(f"rebuilt the ledger: {rows} experiments from results.tsv and git{kept}")
            if skipped:
                console.print(
                    f"[yellow]skipped results.tsv lines {', '.join(map(str, skipped))}[/]: not lines the loop writes "
                    "(or no experiment of theirs left in git); each experiment's commit was taken from git instead"
                )
    except AutoresearchError as exc:
        return _error(console, exc)
    except KeyboardInterrupt as exc:
        console.print("interrupted: run the same command again to resume where it stopped")
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except BrokenPipeError:  # `autoresearch status | head -1`: the reader has gone; as git does, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 141
    except OSError as exc:
        if exc.errno not in _NOT_ALLOWED:
            raise
        # a read-only mount, another user's file: the person's to fix, so a message and no traceback
        error = AutoresearchError(
            f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc),
            hint="autoresearch writes its state, results.tsv and reports into the workspace and prepared data into "
            "the cache: run it where both may be written (nothing was lost)",
        )
        return _error(console, error)
    return 0


def _readable_rows(root: Path) -> int:
    """How many experiments the workspace's ledger holds, where it reads fine; 0 where it is missing, empty or
    corrupt (what `rebuild-ledger` is for)."""
    import sqlite3

    from autoresearch.loop.ledger import Ledger

    if not (root / ".autoresearch" / "ledger.sqlite").is_file():
        return 0
    try:
        ledger = Ledger(root)
    except (AutoresearchError, sqlite3.Error):
        return 0
    try:
        return len(ledger.all())
    except (sqlite3.Error, ValueError, TypeError):
        return 0
    finally:
        ledger.close()


def _error(console: Console, exc: AutoresearchError) -> int:
    # its text is no markup; unwrapped, so that a log (`wait` reads the background loop's) holds it whole
    console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
