"""Where the evaluator's time goes when it scores a handed-over model in a fresh process, as in the loop.

    PYTHONPATH=$PWD/src python3 bench/eval_phases.py export /tmp/handover   # train.py's side, once
    PYTHONPATH=$PWD/src python3 bench/eval_phases.py score /tmp/handover    # a fresh evaluator; run it twice

The `h100` preset on CUDA; `tiny` on the CPU where there is no CUDA (or AUTORESEARCH_PRESET=tiny).

`score` times each phase: importing torch, importing its compiler, initialising CUDA, loading the graph
and weights, compiling the graph (Inductor) and the loss, the evaluation of the preset's validation
tokens (random tokens stand in) and the causality probe.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

started = time.perf_counter()
marks: dict[str, float | str] = {}


def mark(name: str) -> None:
    marks[name] = round(time.perf_counter() - started - sum(v for v in marks.values() if isinstance(v, float)), 2)


def _setting():
    import os

    import torch

    from autoresearch.config.presets import get_preset

    cuda = torch.cuda.is_available()
    preset = get_preset(os.environ.get("AUTORESEARCH_PRESET", "h100" if cuda else "tiny"))
    return preset, torch.device("cuda" if cuda else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _batch(preset) -> int:
    from autoresearch.evaluator.score import eval_batch_size

    return eval_batch_size(preset.eval_rows, preset.seq_len, preset.vocab_size)


def export(out: Path) -> None:
    import importlib.util
    import math

    import torch

    from autoresearch.harness.handover import Exported

    preset, device = _setting()
    spec = importlib.util.spec_from_file_location(
        "t", Path(__file__).parents[1] / "src/autoresearch/workspace/templates/train.py"
    )
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    for name, value in preset.train_defaults.items():
        setattr(t, name, value)
    width = math.ceil(t.DEPTH * t.ASPECT_RATIO / t.HEAD_DIM) * t.HEAD_DIM
    config = t.GPTConfig(preset.vocab_size, preset.seq_len, t.DEPTH, width // t.HEAD_DIM, width)
    with torch.device(device):
        model = t.GPT(config, device)
        model.init_weights()
    if device.type == "cuda":
        model.wte.to(torch.bfloat16)
        model.value_embeds.to(torch.bfloat16)
    mark("build the model")
    exported = Exported(model, _batch(preset), preset.seq_len, preset.vocab_size, device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph.json").write_bytes(exported.document)
    mark("export")
    (out / "weights.safetensors").write_bytes(exported.weights())
    mark("weights")
    print(json.dumps(marks))


def score(out: Path) -> None:
    import numpy as np
    import torch

    mark("import torch")
    preset, device = _setting()
    if device.type == "cuda":
        import torch._dynamo
        import torch._inductor.compile_fx

        mark("import the compiler")
        torch.zeros(1, device="cuda")
        mark("initialise CUDA")
    from autoresearch.device import autocast
    from autoresearch.evaluator.program import Program, ShapeCompiled
    from autoresearch.evaluator.score import Scorer, causality_violation, score_rows

    program = Program((out / "graph.json").read_bytes(), device)
    program.bind((out / "weights.safetensors").read_bytes())
    _sync(device)
    mark("load graph and weights")
    model = ShapeCompiled(program) if device.type == "cuda" else program.module
    scorer = Scorer(model, preset.vocab_size, device)
    rows = np.random.default_rng(0).integers(1, preset.vocab_size, (preset.eval_rows, preset.seq_len + 1))
    rows = rows.astype(np.uint16)
    batch = _batch(preset)
    x = torch.from_numpy(rows[:batch].astype(np.int64)).to(device)
    with torch.inference_mode(), autocast(device):
        model(x[:, :-1])
    _sync(device)
    mark("compile the graph" if device.type == "cuda" else "first batch")
    marks["graph compiled"] = getattr(model, "eager_because", None) or "yes"
    with torch.inference_mode():
        scorer(x[:, :-1], x[:, 1:])
    _sync(device)
    mark("compile the loss")
    token_bytes = torch.ones(preset.vocab_size, dtype=torch.int64, device=device)
    result = score_rows(scorer, rows, token_bytes, batch)
    _sync(device)
    mark("evaluate")
    causality_violation(scorer, rows, result.per_token, batch)
    _sync(device)
    mark("probe")
    print(json.dumps(marks))


if __name__ == "__main__":
    {"export": export, "score": score}[sys.argv[1]](Path(sys.argv[2]))
