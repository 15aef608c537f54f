"""The environment variables that switch a part of the loop off, each with the values it knows: one set to another
value is taken as unset, which a person who wrote `AUTORESEARCH_COMPILE_CACHE=off` for `run` (no shared compile cache,
a channel between runs closed) would not know without a word (red team). `unknown` says which, for `run` to warn."""

from __future__ import annotations

import os
from collections.abc import Mapping

SANDBOX = "AUTORESEARCH_SANDBOX"  # "off": run train.py unconfined (say, where bwrap misbehaves); the loop warns
FORK_SERVER = "AUTORESEARCH_FORK_SERVER"  # "0": start every experiment as a new process instead of forking it
PREWARM = "AUTORESEARCH_PREWARM"  # "0": start each run's processes only when it begins
COMPILE_CACHE = "AUTORESEARCH_COMPILE_CACHE"  # "run": no shared cache; every run compiles from scratch
COMPILE_AHEAD = "AUTORESEARCH_COMPILE_AHEAD"  # "0": load and compile the graph only once training is over

# name -> (the value that switches it, the value that is the default); case is ignored, as for "off"
KNOWN = {
    SANDBOX: ("off", "on"),
    FORK_SERVER: ("0", "1"),
    PREWARM: ("0", "1"),
    COMPILE_CACHE: ("run", "shared"),
    COMPILE_AHEAD: ("0", "1"),
}


def switched(name: str, env: Mapping[str, str] = os.environ) -> bool:
    """Whether switch `name` is set to the value that switches it, case and spaces around it ignored, as `unknown`
    reads it (helper 146: `AUTORESEARCH_COMPILE_CACHE=RUN` was warned of as known, and switched nothing)."""
    return env.get(name, "").strip().lower() == KNOWN[name][0]


def unknown(env: Mapping[str, str] = os.environ) -> list[str]:
    """A warning for each switch set to a value it does not know (taken as unset)."""
    return [
        f"${name} is {value!r}, which it does not know: taken as unset ({switched!r} switches it, {default!r} is "
        "the default)"
        for name, (switched, default) in KNOWN.items()
        if (value := env.get(name)) is not None and value.strip().lower() not in ("", switched, default)
    ]
