"""The command line's arguments: every command and its options."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoresearch.loop.settings import BASELINE_RUNS, BASELINE_SEEDS_MAX, BASELINE_SEEDS_MIN


def _given(text: str) -> str:
    """An option's value that may not be empty: `--tag ''` took today's date, `-m ''` judged "(no description)"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("may not be empty")
    return text


def _port(text: str) -> int:
    """A TCP port, 0 to 65535 (`--port 99999` was taken as 34463, and said to be in use)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is no port: give 1 to 65535 (0: any free one)")
    return port


def _data_options(parser: argparse.ArgumentParser) -> None:
    presets = "apparatus preset: h100 or tiny (default: h100 with CUDA, else tiny)"
    parser.add_argument("--preset", type=_given, help=presets)
    parser.add_argument(
        "--dataset",
        type=_given,
        help="python-source, local:PATH, climbmix or fineweb-edu (default: climbmix with CUDA, else python-source)",
    )
    parser.add_argument(
        "--cache-dir",
        type=_given,
        help="prepared data lives here (default: $AUTORESEARCH_CACHE or ~/.cache/autoresearch)",
    )
    parser.add_argument("--root", type=Path, help="python-source only: read this directory tree instead")
    parser.add_argument("--shards", type=int, help="climbmix / fineweb-edu only: how many training shards to download")
    parser.add_argument("--force", action="store_true", help="rebuild the tokenizer and shards even if prepared")


def _workspace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", type=Path, default=Path("."), help="the workspace (default: this directory)")


def _judging_options(parser: argparse.ArgumentParser, workers: bool = True) -> None:
    seeds = f"seeds the baseline is trained with, 2 to {BASELINE_SEEDS_MAX} (default {BASELINE_RUNS}"
    if workers:  # `try` has one
        seeds += (
            f"; with several workers, if that is more, one on each of half of them, on each of up to "
            f"{BASELINE_SEEDS_MIN} with fewer than {2 * BASELINE_SEEDS_MIN}, at most {BASELINE_SEEDS_MAX}"
        )
    seeds += ")"
    parser.add_argument("--baseline-runs", type=int, default=BASELINE_RUNS, help=seeds)
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


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser, and each command's."""
    parser = argparse.ArgumentParser(prog="autoresearch", description="An autonomous research loop over train.py.")
    parser.add_argument("--version", action="version", version=f"autoresearch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="download or read a dataset, train the tokenizer, write token shards")
    _data_options(prepare)

    init = sub.add_parser("init", help="make a research workspace: a git repository with train.py and program.md")
    init.add_argument("directory", type=Path)
    from autoresearch.config.apparatus import budget_argument  # checks it before any work: 1 s to 1 day

    init.add_argument("--budget", type=budget_argument, help="training seconds per experiment (default: the preset's)")
    init.add_argument("--tag", type=_given, help="the branch is autoresearch/<tag> (default: today's date, e.g. nov22)")
    _data_options(init)

    run = sub.add_parser("run", help="run the research loop in a workspace (Ctrl-C stops; run again to resume)")
    run.add_argument(
        "--agent",
        default="tune",
        help="tune (default, offline), anthropic, openai, aider, claude-code, codex, command (any other CLI agent) "
        "or queue (only what `submit` queues)",
    )
    run.add_argument("--model", type=_given, help="the LLM for anthropic, openai, aider, claude-code or codex")
    run.add_argument("--command", dest="agent_command", help="for --agent command: the coding agent's command line")
    run.add_argument("--max-experiments", type=int, help="stop after this many experiments (default: never)")
    run.add_argument("--hours", type=float, help="stop after this many hours (default: never)")
    run.add_argument("--linger", type=float, default=0.0, help=argparse.SUPPRESS)  # --agent queue: wait for more
    run.add_argument("--plain", action="store_true", help="one line per event instead of the live view")
    _judging_options(run)
    _worker_options(run)
    _workspace_option(run)

    submit = sub.add_parser("submit", help="queue the working tree's train.py as an experiment; print its id at once")
    submit.add_argument("-m", "--message", required=True, type=_given, help="one line: what you changed")
    _judging_options(submit)
    _worker_options(submit)
    _workspace_option(submit)

    wait = sub.add_parser("wait", help="block until experiments are judged; one verdict line each")
    unreported = "experiment ids (default: every submitted one whose verdict no `wait` has printed yet)"
    wait.add_argument("ids", nargs="*", type=int, help=unreported)
    _workspace_option(wait)

    try_ = sub.add_parser("try", help="judge the train.py in the working tree as one experiment (for coding agents)")
    try_.add_argument("-m", "--message", required=True, type=_given, help="one line: what you changed")
    _judging_options(try_, workers=False)
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

    from autoresearch.web.serve import DEFAULT_PORT

    web = sub.add_parser("web", help="the night in a browser, live: what runs, the chart, every experiment")
    web.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0: any free one)"
    )
    web.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine alone; 0.0.0.0: all)"
    )
    _workspace_option(web)

    rebuild = sub.add_parser("rebuild-ledger", help="make a lost or corrupt ledger again from results.tsv and git")
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="rebuild a ledger that reads fine too (what only it holds is lost; the file is kept beside it)",
    )
    _workspace_option(rebuild)
    return parser, sub.choices


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line's arguments; an option the command does not take is refused with that command's usage (the
    whole parser's named none of its options: `run --agnet tune` got `usage: autoresearch [-h] [--version] {...}`)."""
    parser, commands = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args
