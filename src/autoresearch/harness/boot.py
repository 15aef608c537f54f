"""`python -m autoresearch.harness.boot`: the experiment's process, started by the evaluator.

It imports what every run needs (torch, its compiler, the harness) and rehearses the model's export
while the previous experiment is still training, waits for "go", then runs ./train.py as
`python train.py` would.
"""

from __future__ import annotations

import importlib
import runpy
import sys

from autoresearch.wire import Channel, ChannelClosed

PRELOAD = ("torch", "torch._dynamo", "torch._inductor.compile_fx", "torch.nn.attention.flex_attention")


def main() -> None:
    channel = Channel.from_env()
    if channel is None:
        sys.exit("autoresearch.harness.boot is started by the evaluator, not by hand: run `python train.py`")
    for name in (*PRELOAD, "autoresearch.harness"):
        try:
            importlib.import_module(name)
        except Exception:
            continue
    try:
        from autoresearch.harness.handover import rehearse

        rehearse()
    except Exception:
        pass  # the run's own export says what is wrong, if anything
    try:
        header, _ = channel.receive()
    except ChannelClosed:
        sys.exit(0)  # the evaluator went away before this run was needed
    if header.get("op") != "go":
        sys.exit(f"autoresearch: expected 'go' from the evaluator, got {header!r}")
    sys.argv = ["train.py"]
    sys.path[0] = ""  # as `python train.py` in this directory: its own modules first
    runpy.run_path("train.py", run_name="__main__")


if __name__ == "__main__":
    main()
