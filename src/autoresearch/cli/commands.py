"""What `run`, `submit`, `wait`, `try`, `show` and `diff` do, called with the parsed arguments."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import time

from rich.console import Console

from autoresearch.errors import AutoresearchError
from autoresearch.signals import deferred


def prepare_data(args: argparse.Namespace, console: Console):
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


# What a `submit` that found the disk full says to do once space is freed
SUBMIT_AGAIN = "your change is still in train.py (or put back there by the next `submit`): submit it again"


def make_loop(args: argparse.Namespace, reporter, env: dict[str, str] | None = None, workers: int = 1):
    """The loop of the workspace `args` name, its executor's runs started with `env` over the loop's environment;
    `workers`: how many runs train at once (each run's cap of tasks is a share of your own, where that binds them)."""
    from autoresearch.loop.engine import LoopConfig, ResearchLoop
    from autoresearch.loop.executor import LocalExecutor
    from autoresearch.workspace import quarantine
    from autoresearch.workspace.workspace import Workspace

    check_baseline_runs(args.baseline_runs)
    from autoresearch import switches
    from autoresearch.evaluator import compile_cache, cores, memory, run_user, sandbox, tasks

    cores.check_device_settings()  # a bad $AUTORESEARCH_DEVICE or $AUTORESEARCH_PEAK_FLOPS: said now, not by each run
    compile_cache.limit_bytes()  # a bad $AUTORESEARCH_COMPILE_CACHE_GB is said now, not as every run's crash
    run_tasks = tasks.run_tasks()  # and so is a bad $AUTORESEARCH_TASKS
    if fitted := tasks.shares(workers):  # the runs' and the turns' cap, as their environment tells them
        os.environ.update(fitted)
        run_tasks = tasks.run_tasks()
    memory.run_memory()  # or $AUTORESEARCH_RUN_MEMORY
    memory.agent_memory()  # or $AUTORESEARCH_AGENT_MEMORY, as the first turn's error
    quarantine.limit_bytes()  # or $AUTORESEARCH_QUARANTINE_GB, as the first put-back's
    if run_user.choice() == "nobody" and run_user.wanted() and (why := sandbox.users_reason()):  # asked for, not had
        raise AutoresearchError(
            f"{run_user.RUN_USER_ENV}=nobody, but a run cannot be made a user of its own here: {why}",
            hint=f"unset {run_user.RUN_USER_ENV}: runs are then root with no capability left where this fails (capped "
            "by a pids group where one can be made)",
        )
    config = LoopConfig(baseline_runs=args.baseline_runs, timeout=args.timeout)
    ws = Workspace(args.workspace)
    executor = LocalExecutor(env=env)  # its fork server starts importing at once
    try:
        loop = ResearchLoop(ws, executor, reporter, config)
    except BaseException:  # refused (a bad --timeout, a ledger it cannot trust): nothing of it left running
        executor.close(wait=0)  # it is still importing: nothing of it is worth waiting for
        raise
    for warning in switches.unknown():
        reporter.message(f"warning: {warning}")
    if fitted:  # your ulimit -u is low (RHEL's 4096)
        lacking = tasks.overlap(workers, run_tasks)
        reporter.message(
            f"{'warning: ' if lacking else ''}a run may have {run_tasks} tasks at once here, not "
            f"{tasks.DEFAULT_TASKS}: your limit of {tasks.user_limit()} processes and threads (ulimit -u) counts the "
            f"runs' too, and {workers} run{'s' if workers > 1 else ''} at once, the agent's turn and your other "
            "processes share it"
            + (", too few for a run that starts processes without end to leave the others theirs" if lacking else "")
            + f". For more, raise `ulimit -u` (nproc in limits.conf) or set {tasks.TASKS_ENV}"
        )
    if why := sandbox.unavailable_reason():
        reporter.message(
            f"warning: train.py runs unconfined here ({why}). Its score is still computed outside it and the "
            "workspace is checked after every run, but it can read what you can (the validation data too). "
            "To confine it: install bubblewrap and allow unprivileged user namespaces"
        )
    elif why := sandbox.anchors_reason():
        reporter.message(
            f"warning: runs start under bubblewrap's own init here, not one of the loop's ({why}): a train.py "
            "may trace that init and have it start processes beyond the run's cap of tasks"
        )
    asked = run_user.choice() == "auto" and run_user.wanted() and not sandbox.unavailable_reason()
    if asked and (why := sandbox.users_reason()):
        reporter.message(
            f"warning: runs are root in their sandbox here, with no capability left, not a user of their own ({why}): "
            f"what the kernel counts by user, a run shares with your root processes. Set "
            f"{run_user.RUN_USER_ENV}=nobody to have `run` refuse to start instead"
        )
    if not sandbox.runs_capped(run_tasks):
        reporter.message(
            "warning: a run's processes are not capped here (RLIMIT_NPROC does not bind a loop run as root, nor "
            "count per user namespace before Linux 5.14; no pids cgroup can be made below the loop's, and a run cannot "
            f"be made a user of its own: ${run_user.RUN_USER_ENV}): a train.py that starts processes without end can "
            "fill the machine's process table until its run's timeout. Run the loop as another user, or within a pids "
            "limit (docker run --pids-limit, systemd's TasksMax=)"
        )
    return loop


def check_baseline_runs(runs: int) -> None:
    """--baseline-runs, refused before anything starts where it is out of range: each seed is a whole training run
    that the first verdict waits for (`--baseline-runs 100000` was a night of measuring the baseline)."""
    from autoresearch.loop.settings import BASELINE_SEEDS_MAX

    if runs < 2:
        raise AutoresearchError("--baseline-runs must be at least 2: one run cannot measure the noise")
    if runs > BASELINE_SEEDS_MAX:
        # The most measured to help (BENCHMARKS.md, "eight baseline seeds"), and what several workers train at most.
        raise AutoresearchError(
            f"--baseline-runs is at most {BASELINE_SEEDS_MAX} (got {runs}): each seed is a whole training run, all "
            "of them before the first change is judged",
            hint=f"give 2 to {BASELINE_SEEDS_MAX}; {BASELINE_SEEDS_MAX} seeds measure the noise under half its true "
            "value 3 % of the time, 3 seeds 22 %",
        )


def run(args: argparse.Namespace, console: Console) -> None:
    from autoresearch.agents.base import has_shell
    from autoresearch.agents.factory import make_agent
    from autoresearch.evaluator.cores import AGENT_CPUS_ENV
    from autoresearch.loop.live import LiveReporter
    from autoresearch.loop.reporter import PlainReporter, console_echo
    from autoresearch.loop.workers import LOCAL, placed, require_gpus
    from autoresearch.orphans import remove_left_boxes
    from autoresearch.report import make_report
    from autoresearch.workspace import quarantine
    from autoresearch.workspace.disk import DiskFullError
    from autoresearch.workspace.workspace import WorkspaceMoved

    for option, value in (("--max-experiments", args.max_experiments), ("--hours", args.hours)):
        if value is not None and value < 0:  # 0: finish what is in flight, start nothing new
            raise AutoresearchError(f"{option} cannot be negative (got {value:g}); leave it out to run until stopped")
        if value is not None and value != value:  # nan: no time is ever past it, so the loop never stopped
            raise AutoresearchError(f"{option} takes a number (got {value:g}); leave it out to run until stopped")
    check_placement(args)
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
    agent = None if args.agent == "queue" else make_agent(args.agent, args.model, args.agent_command)
    shell = agent is not None and has_shell(agent) and args.ray is None  # Ray's runs are on its nodes' CPUs
    found, theirs = placed(args.gpus, args.workers, agents=shell)
    os.environ.pop(AGENT_CPUS_ENV, None)  # the loop's to set: the agents' turns are pinned to what it says
    os.environ.update(theirs)
    name = agent.name if agent is not None else "submitted experiments"
    live = not args.plain and console.is_terminal
    reporter = LiveReporter(console, f"autoresearch: {name}") if live else PlainReporter(console_echo(console))
    loop = make_loop(args, reporter, found[0].env if found[0].label == LOCAL else None, len(found))
    if theirs:
        reporter.message(
            f"the agent's turns run on CPUs {theirs[AGENT_CPUS_ENV]}, the runs on the others (a turn that kept "
            "every core busy would slow the runs it overlaps)"
        )
    if live:
        reporter.runs_dir = loop.ws.state / "runs"  # where the runs' logs are: the clock follows them
        reporter.resume(loop.ledger.all())
    ran = False
    try:
        with loop.ws.lock():
            ran = True
            if live:
                with reporter:
                    drive(loop, agent, found, args)
            else:
                drive(loop, agent, found, args)
    except DiskFullError as exc:  # what the steps set aside may be what filled it
        if note := quarantine.full_disk_note(loop.ws.state):
            exc.hint = f"{exc.hint}; {note}"
        raise
    except WorkspaceMoved:
        if args.agent == "queue":  # most often the loop `submit` started: said in its log, which `wait` repeats
            raise WorkspaceMoved(loop.ws.root, queue_again(args)) from None
        raise
    finally:
        loop.executor.close()
        remove_left_boxes(loop.ws.state)  # what the evaluators started ahead for runs that never came
        # Not a `run` refused beside another (that loop writes its own report), nor one whose workspace was moved away
        if ran and loop.ledger.all() and not loop.ws.moved():
            history = loop.ws.root / "results.tsv"  # one line, also in a log
            try:
                png, md = make_report(loop.ws.root, stopped=True)
            except (AutoresearchError, OSError) as exc:  # a full disk: the run's own error (if any) is the one to
                # see, and the last `error:` line of driver.log, where `wait` looks for why a background loop stopped
                why = "; ".join(str(exc).split("\n  hint: "))
                console.print(
                    f"warning: the report was not written: {why}", markup=False, highlight=False, soft_wrap=True
                )
            else:
                console.print(
                    f"report: {md} and {png}; history in {history}", markup=False, highlight=False, soft_wrap=True
                )


def queue_again(args: argparse.Namespace) -> str:
    """What resumes a loop with no agent (`submit`'s), stopped or interrupted: a `submit` with its workers (a loop of
    others would measure the runs of another setup than the baseline's)."""
    import shlex

    layout = "".join(f" {shlex.quote(word)}" for word in placement(args))
    return f"the next `autoresearch submit{layout}` (or `run --agent queue{layout}`)"


def placement(args: argparse.Namespace) -> list[str]:
    """The options of `run` or `submit` that say where and how its runs train (`--gpus`, `--workers`, `--ray`,
    `--accelerator`, `--timeout`, `--baseline-runs` where not the default), as given: a loop resumed without them
    would train on another setup, or measure the baseline with as many seeds as the default asks."""
    from autoresearch.loop.settings import BASELINE_RUNS

    options = []
    gpus = args.gpus and "".join(args.gpus.split())  # "0, 1" is 0,1 (each id is stripped): a word a hint names
    seeds = getattr(args, "baseline_runs", BASELINE_RUNS)
    for option, value in (("--gpus", gpus), ("--workers", args.workers), ("--timeout", args.timeout),
                          ("--accelerator", args.accelerator),
                          ("--baseline-runs", seeds if seeds != BASELINE_RUNS else None)):  # fmt: skip
        # A float as Python reads it back, to the last digit (`:g` kept 6: 1000.125 was 1000.12), without a ".0"
        options += [option, repr(value).removesuffix(".0") if isinstance(value, float) else str(value)] if value else []
    return options + (["--ray", *([args.ray] if args.ray else [])] if args.ray is not None else [])


def check_placement(args: argparse.Namespace) -> None:
    """Refuse, before anything starts, where the runs go given twice, or a GPU type without Ray."""
    if args.accelerator and args.ray is None:  # it would be dropped without a word: runs on whatever is here
        raise AutoresearchError("--accelerator goes with --ray", hint="e.g. --ray --accelerator H100")
    if args.ray is not None and (args.gpus or args.workers):
        raise AutoresearchError("give --ray or --gpus/--workers, not both", hint="Ray picks each run's GPU")


def drive(loop, agent, found, args: argparse.Namespace) -> None:
    """One worker, nothing submitted: the loop as it always ran. Else the scheduler and its workers (on Ray's
    GPUs with --ray)."""
    from autoresearch.loop import activity
    from autoresearch.loop.parallel import needs_scheduler, run_workers
    from autoresearch.loop.workers import LOCAL

    first = loop.ledger.next_id()  # what this start asks: every ask failed is an error (Asking.none_proposed)
    resumed = {e.id for e in loop.ledger.in_flight()}  # what a loop before it left in flight: this one trains it
    placed = placement(args)  # recorded for the hint that starts it again
    if getattr(args, "ray", None) is None:  # on the CPU, another share of the cores than the baseline's: none trains
        loop.check_share([device.env for device in found])
    if getattr(args, "ray", None) is not None:
        from autoresearch.loop.ray_cluster import connect, disconnect, open_to_agent, ray_devices
        from autoresearch.loop.ray_executor import RayExecutor, Shipment

        try:
            found = ray_devices(connect(args.ray or None, args.accelerator))
            if warning := open_to_agent(agent):
                loop.reporter.message(warning)
            shipment = Shipment()  # what nodes without the workspace need, sent once for all the workers
            executor_for = lambda _device: RayExecutor(args.accelerator, shipment)
            run_workers(loop, agent, found, args.max_experiments, args.hours, args.linger, executor_for, placed)
        finally:
            disconnect()
    elif agent is not None and len(found) == 1 and found[0].label == LOCAL and not needs_scheduler(loop):
        # Not taking what `submit` queues: it is told at once
        with activity.session(loop.ws.state, [found[0].label], submissions=False, placement=placed):
            loop.run(agent, args.max_experiments, args.hours)
    else:
        run_workers(loop, agent, found, args.max_experiments, args.hours, args.linger, placement=placed)
    if agent is not None:
        loop.none_proposed(agent, first, resumed)


def submit(args: argparse.Namespace, console: Console) -> None:
    """Queue the working tree's train.py with a running loop (started in the background if none runs); print
    `exp N queued` on stdout, within a second or two while the loop runs, whether or not a worker is free.
    train.py is the best again at once (the loop reads the branch's train.py, never the working tree's); if the
    submission is refused or no loop takes it (then withdrawn: it never trains), the change is put back."""
    import subprocess

    from autoresearch.config.apparatus import CONFIG_NAME
    from autoresearch.loop import guard
    from autoresearch.loop.activity import read_session
    from autoresearch.loop.comparison import check_share
    from autoresearch.loop.held_edits import HeldEdit, put_back_edits
    from autoresearch.loop.inbox import RESUBMIT_HINT, SubmitError, edit_base, send
    from autoresearch.loop.ledger import ledger_path, verified_rows
    from autoresearch.loop.settings import CONFIG_EDITED_HINT, run_timeout
    from autoresearch.loop.waiting import LOOP_STARTED
    from autoresearch.loop.workers import devices, require_gpus
    from autoresearch.workspace.disk import disk_full_is_an_error
    from autoresearch.workspace.workspace import Workspace

    check_baseline_runs(args.baseline_runs)  # before a loop is started with it in the background
    check_placement(args)
    ws = Workspace(args.workspace)
    run_timeout(args.timeout, ws.apparatus.budget_seconds)  # the loop started with it would refuse it in its log
    require_gpus(args.gpus)  # a wrong --gpus is an error before anything is queued
    found = devices(args.gpus, args.workers)
    said = functools.partial(console.print, markup=False, highlight=False, soft_wrap=True)  # a path on one line
    if (lost := put_back_edits(ws, said)) is not None:
        raise AutoresearchError(
            f"a `submit` killed before it queued its change ({lost}) had taken it out of train.py; it is back in "
            "train.py",
            hint="check it and submit it again",
        )
    source, base = ws.read_train_py(), ws.git.head()
    if source == ws.committed_train_py(base):
        raise AutoresearchError("train.py is the same as the best", hint="edit train.py first")
    if CONFIG_NAME in ws.git.changed_paths():  # the loop's runs would read it, and stop on another apparatus
        raise AutoresearchError(f"{CONFIG_NAME} was edited: a submission is train.py alone", hint=CONFIG_EDITED_HINT)
    # What any loop refuses at once (not Python, only a new seed, the same as an experiment in flight or measured on
    # the same best: red team, an agent's resubmission of its discarded change started a loop only to refuse it):
    # refused here, and no loop started to say it
    made_from = edit_base(ws.state, base)
    if why := guard.rejection(ws.committed_train_py(made_from), source) or already_tried(ws, source, made_from):
        raise SubmitError(f"rejected before running: {why}", hint=RESUBMIT_HINT)
    edit = ws.train_py.read_bytes().decode()  # as it is on disk, line endings and all, to put back on a failure

    launched = []

    def start() -> subprocess.Popen:
        from autoresearch.evaluator.sandbox import module_command

        # It would refuse another share of the cores than the baseline's in its log, and the change be withdrawn and
        # put back: said here, and no loop started to say it (one running keeps its own workers)
        if args.ray is None and ledger_path(ws.root).is_file():
            check_share(verified_rows(ws.root), ws.state, [device.env for device in found])
        launched.append(True)
        argv = [
            *module_command(sys.executable, "autoresearch"),
            "run",
            "--agent",
            "queue",
            "--plain",
            "--linger",
            "600",
        ]
        argv += ["--workspace", str(ws.root), *placement(args)]
        with (ws.state / "driver.log").open("ab") as log:
            log.write(f"{LOOP_STARTED}, {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        # One line, however long the path: a coding agent reads it from a pipe, where the console wrapped it at 80
        console.print(
            f"started a loop in the background (its log: {ws.state / 'driver.log'})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return proc

    # A full disk on the way: the change is back in train.py, or (where even that found no room) kept aside for the
    # next `submit` to put back; said in those words, not the loop's
    with disk_full_is_an_error("queueing train.py", SUBMIT_AGAIN):
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
    # `submit --timeout 20` to a loop started without it: the run hung for the loop's own 187 s, and nothing said so
    if (
        not launched
        and (running := read_session(ws.state)) is not None
        and (note := not_taken(placement(args), running))
    ):
        console.print(note, markup=False, highlight=False, soft_wrap=True)


def not_taken(given: list[str], running) -> str | None:
    """What `submit` says where it gave the loop already running (`running`, its activity.Session) options of where
    and how long runs train (`given`) other than the loop's own, which it keeps; None where they are the same, or the
    loop recorded none (an older one)."""
    import shlex

    from autoresearch.loop.activity import said_options

    if not given or running.placement is None:
        return None
    theirs, yours = options_of(running.placement), options_of(given)
    gpus = [w.removeprefix("gpu ") for w in running.workers if w.startswith("gpu ")]
    if not (other := {o: v for o, v in yours.items() if not _same(o, v, theirs.get(o), gpus)}):
        return None
    # Where runs train, given, replaces the loop's where `run` takes one or the other (red team: `--ray --workers 2`
    # was named to a loop of `--ray`, and refused)
    if yours.keys() & {"--gpus", "--workers"}:
        theirs = {o: v for o, v in theirs.items() if o not in _WHERE}
    elif "--ray" in yours:  # the loop's --accelerator stays, where not given
        theirs = {o: v for o, v in theirs.items() if o not in ("--gpus", "--workers")}
    # Only options `run` takes, quoted (red team: a loop.json written by hand put `60;touch x` in the command)
    words = said_options([word for option, value in {**theirs, **yours}.items() for word in (option, value) if word])
    if words is None:
        again = " with them"
    elif running.asking:  # with its agent's options, which are not recorded
        again = f": `autoresearch run` with {words}"
    else:
        again = f": `autoresearch run --agent queue {words}`"
    return (
        f"note: the loop already running took it with its own options ({shlex.join(running.placement) or 'none'}), "
        f"not {words_of(other)}, which only a loop that `submit` starts is given; to train with them, stop that loop "
        f"(`kill {running.pid}`: it loses nothing) and start it again{again}"
    )


_WHERE = ("--gpus", "--workers", "--ray", "--accelerator")  # the options of where runs train (`run` takes one way)


def _same(option: str, yours: str, theirs: str | None, gpus: list[str]) -> bool:
    """Whether an option's value given to `submit` is the running loop's (`theirs`): `--gpus 0,1` to a loop of `--gpus
    all` on GPUs 0 and 1 (`gpus`, its workers'), or of `--gpus 1,0`, and `--timeout 1000000` to one recorded as
    `1e+06` (by an older version), are."""
    if theirs is None or yours == theirs:
        return yours == theirs
    if option == "--gpus":  # `all`: given now, the machine's GPUs (a loop of 0,1 on four is not `all`: red team)
        from autoresearch.loop.workers import visible_gpus

        given = set(visible_gpus()) if yours == "all" else set(yours.split(","))
        return given == (set(gpus) if theirs == "all" else set(theirs.split(",")))
    if option == "--timeout":
        with contextlib.suppress(ValueError):
            return float(yours) == float(theirs)
    return False


def options_of(words) -> dict[str, str]:
    """Each option of `placement`'s words and its value ("" for `--ray` without an address)."""
    return {w: "" if i + 1 == len(words) or words[i + 1].startswith("--") else words[i + 1]
            for i, w in enumerate(words) if w.startswith("--")}  # fmt: skip


def words_of(options: dict[str, str]) -> str:
    """`options_of`'s options as a command line's words again."""
    return " ".join(word for option, value in options.items() for word in (option, value) if word)


def already_tried(ws, source: str, base: str) -> str | None:
    """Why the loop refuses `source` made from `base` as a repeat (`Asking.duplicate_of`), or None; None where the
    workspace has no ledger yet."""
    from autoresearch.loop.asking import duplicate
    from autoresearch.loop.ledger import ledger_path, verified_rows

    if not ledger_path(ws.root).is_file():
        return None
    return duplicate(verified_rows(ws.root), source, base)  # read only: a loop may be writing it


def wait(args: argparse.Namespace, console: Console) -> None:
    """One verdict line on stdout for each experiment, as it is judged. With no ids: every submitted experiment
    whose verdict no `wait` has printed yet."""
    from autoresearch.loop.activity import run_command
    from autoresearch.loop.experiment import best_of
    from autoresearch.loop.inbox import TAKE_TIMEOUT_S, Inbox
    from autoresearch.loop.ledger import Ledger
    from autoresearch.loop.reporter import verdict_line
    from autoresearch.loop.waiting import beside, loop_running, reported, unreported, wait_for
    from autoresearch.workspace.workspace import Workspace, WorkspaceMoved

    ws = Workspace(args.workspace)
    if not args.ids:  # a `submit` run beside it (`submit ... & wait`) first: its experiment is to be waited for too
        deadline = time.monotonic() + TAKE_TIMEOUT_S
        while (Inbox(ws.state).submitting() or beside("submit")) and time.monotonic() < deadline:
            time.sleep(0.1)
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
        # A Ctrl-C or SIGTERM between the line and its mark would have the next `wait` print the verdict again: it
        # waits until both are done (a SIGKILL there can still do it; printed twice beats never printed).
        with deferred(signal.SIGINT, signal.SIGTERM):
            print(verdict_line(exp, best), flush=True)
            reported(ws.state, exp.id)

    def ledger() -> Ledger:  # never at a path the workspace left: opening one there made its folder and a new ledger
        if ws.moved():  # (then "no experiment N in the ledger"); its loop stops too (loop/scheduler.py)
            raise WorkspaceMoved(ws.root, "the next `autoresearch submit` (or `run --agent queue`), then `wait`,")
        return Ledger(ws.root)

    running = loop_running(ws.is_locked, ws.state)
    resume = run_command(ws.state, "--agent queue")
    wait_for(ledger, ids, running, log=ws.state / "driver.log", judged=judged, resume=resume)


def try_change(args: argparse.Namespace, console: Console) -> None:
    """Progress on stderr; on stdout exactly one line, the verdict on the working tree's train.py."""
    from autoresearch.loop import activity
    from autoresearch.loop.reporter import PlainReporter, console_echo, verdict_line
    from autoresearch.loop.trying import try_working_tree
    from autoresearch.orphans import remove_left_boxes

    reporter = PlainReporter(console_echo(console), hold_verdicts=True)
    loop = make_loop(args, reporter)
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


def compare(args: argparse.Namespace) -> str:
    from autoresearch.report import read_experiments
    from autoresearch.report.compare import diff_text, show_text
    from autoresearch.workspace.workspace import Workspace

    ws = Workspace(args.workspace)
    experiments = read_experiments(ws.root)
    if args.command == "show":
        return show_text(ws.git, experiments, args.experiment, stopped=not ws.is_locked())
    return diff_text(ws.git, experiments, args.a, args.b, stopped=not ws.is_locked())
