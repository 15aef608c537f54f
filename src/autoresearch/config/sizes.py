"""A limit a person sets in gigabytes through an environment variable: read in one way, refused with one error."""

from __future__ import annotations

import math
import os

from autoresearch.errors import ConfigError


def gigabytes(name: str, default: float, unset: str, example: int) -> int:
    """$`name` in GB (10^9 bytes; `default` where unset or empty), as bytes. ConfigError for a value that is not a
    size, whose hint says `unset` (what holds how much where the variable is unset: "the quarantine keeps") and gives
    `example`."""
    raw = os.environ.get(name, "").strip()
    try:
        gb = float(raw) if raw else default
    except ValueError:
        gb = math.nan
    if not 0 <= gb < math.inf:
        raise ConfigError(
            f"{name} takes a size in GB (got {raw!r})", hint=f"e.g. {name}={example}; unset, {unset} {default:g} GB"
        )
    return int(gb * 1e9)
