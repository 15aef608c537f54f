"""Whether a run can be forked into a sandbox of ours here: `sandbox.anchors_reason` asks once, at the loop's start.

Each forked run takes these steps (evaluator/confined.py): bubblewrap makes a fresh sandbox around our anchor
(`--as-pid-1`), a process forked from the evaluator joins its namespaces (evaluator/joining.py), forks once more
into its PID namespace and drops every privilege. This module takes the same steps, in a process of its own (one with
threads must not fork), and exits 0, or prints why not. Where they work here, an evaluator whose run cannot take them
stops the loop (evaluator/promises.py ANCHOR) rather than start it under bubblewrap's own init, which it can trace.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from autoresearch.evaluator import confined, joining, sandbox


def _join_and_drop(anchor: int, ready: int) -> None:
    """In a forked child: join the anchor's sandbox, fork into its PID namespace, drop every privilege there."""
    try:
        joining.join(anchor)
        inner = os.fork()
        if inner == 0:
            try:
                joining.drop_privileges()
                os.write(ready, b"ok")
            finally:
                os._exit(0)
        os.waitpid(inner, 0)
    except BaseException as exc:
        os.write(ready, f"{type(exc).__name__}: {exc}".encode())
    finally:
        os._exit(0)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="autoresearch-sandbox-probe-") as tmp:
        box = Path(tmp, "box")
        box.mkdir()
        view = sandbox.View(hidden=[Path(tmp)], gpu=False)
        anchor = confined.start_anchor(box, view, {"PATH": os.defpath}, filtered=False, group=None)
        try:
            pid = confined.anchor_pid(anchor)
            if pid is None:
                print("bwrap did not start our init (--as-pid-1)")
                return 1
            ready_r, ready_w = os.pipe()
            child = os.fork()
            if child == 0:
                os.close(ready_r)
                _join_and_drop(pid, ready_w)
            os.close(ready_w)
            with os.fdopen(ready_r, "rb") as ready:
                answer = ready.read().decode(errors="replace")
            os.waitpid(child, 0)
        finally:
            confined.kill_tree(anchor)
    if answer != "ok":
        print(f"a process cannot join it: {answer or 'it ended without a word'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
