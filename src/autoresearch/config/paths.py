"""Where prepared data lives: `--cache-dir`, else $AUTORESEARCH_CACHE, else ~/.cache/autoresearch."""

from __future__ import annotations

import os
from pathlib import Path

from autoresearch.errors import ConfigError

CACHE_ENV = "AUTORESEARCH_CACHE"


def cache_root(flag: str | Path | None = None) -> Path:
    chosen = flag or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoresearch"
    try:
        return Path(chosen).expanduser().resolve()
    except RuntimeError:  # `~name/...` where no user is so named: Path.expanduser's error, a traceback
        raise ConfigError(
            f"cannot place the cache at {chosen}: no user is named {str(chosen).split('/')[0][1:]!r}, whose home it is",
            hint=f"give --cache-dir (or ${CACHE_ENV}) as a full path, or as ~/... for your own home",
        ) from None


def ray_dir(cache: Path) -> Path:
    """On a Ray node that does not see the loop's workspace: its copies of the data and its runs' directories
    (loop/ray_executor.py). The experiment never sees it."""
    return cache / "ray"


def prepared_dir(cache: Path, slug: str, preset: str) -> Path:
    """One directory per (dataset, preset): the tokenizer and shards depend on both."""
    return cache / "data" / slug / preset
