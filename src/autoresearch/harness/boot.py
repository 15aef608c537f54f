"""`python -m autoresearch.harness.boot`: the experiment's process, started by the evaluator.

It imports what every run needs (torch, the harness, torch's compiler, which torch.export needs too)
and rehearses the model's export while the previous experiment is still training, waits for "go", then
runs ./train.py as `python train.py` would. On a CPU that work takes cores from the run that trains
meanwhile, but not its budget: there the budget is that run's own CPU time (evaluator/clock.py).
"""

from __future__ import annotations

import importlib
import runpy
import sys

from autoresearch.wire import Channel, ChannelClosed

COMPILER = ("torch._dynamo", "torch._inductor.compile_fx", "torch.nn.attention.flex_attention")


def main() -> None:
    channel = Channel.from_env()
    if channel is None:
        sys.exit("autoresearch.harness.boot is started by the evaluator, not by hand: run `python train.py`")
    from autoresearch import harness  # noqa: F401  (imports torch)

    try:
        for name in COMPILER:
            importlib.import_module(name)
        from autoresearch.harness.handover import rehearse

        rehearse()
    except Exception:
        pass  # the run itself will say what is wrong, if anything
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
