"""The `autoresearch` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console

from autoresearch.errors import AutoresearchError


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="apparatus preset: h100 or tiny (default: h100 with CUDA, else tiny)")
    parser.add_argument(
        "--dataset",
        help="python-source, local:PATH, climbmix or fineweb-edu (default: climbmix with CUDA, else python-source)",
    )
    parser.add_argument(
        "--cache-dir", help="where prepared data lives (default: $AUTORESEARCH_CACHE or ~/.cache/autoresearch)"
    )
    parser.add_argument("--root", type=Path, help="python-source only: read this directory tree instead")
    parser.add_argument("--shards", type=int, help="climbmix / fineweb-edu only: how many training shards to download")
    parser.add_argument("--force", action="store_true", help="rebuild the tokenizer and shards even if prepared")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="download or read a dataset, train the tokenizer, write token shards")
    _data_options(prepare)

    init = sub.add_parser("init", help="make a research workspace: train.py and the locked apparatus config")
    init.add_argument("directory", type=Path)
    init.add_argument("--budget", type=float, help="training seconds per experiment (default: the preset's)")
    _data_options(init)
    return parser


def _prepare(args: argparse.Namespace, console: Console):
    from autoresearch.harness.paths import cache_root
    from autoresearch.harness.prepare import prepare
    from autoresearch.harness.presets import default_dataset_name, default_preset_name, get_preset

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=True)
    try:
        if args.command == "prepare":
            _prepare(args, console)
        elif args.command == "init":
            from autoresearch.workspace.init import create_workspace

            preset, dataset, data_dir = _prepare(args, console)
            create_workspace(args.directory, preset, dataset, data_dir, args.budget)
            console.print(f"[green]workspace ready[/] in {args.directory}: cd there and run `python train.py`")
    except AutoresearchError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: run the same command again to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
