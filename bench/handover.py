"""What the hand-over costs on a GPU: export the shipped train.py's model, load it as the evaluator does,
compare its logits with the original's, and time an evaluation of the preset's validation tokens through
the loaded graph (eager and compiled) against the model train.py compiled (the old in-process path).

    PYTHONPATH=$PWD/src python3 bench/handover.py --patterns L,SSSL --out results.json

Random tokens stand in for the validation rows: the cost does not depend on what the tokens are.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from autoresearch import device as devices
from autoresearch.config.presets import get_preset
from autoresearch.evaluator.program import load_program
from autoresearch.evaluator.score import Scorer, batch_size_for, causality_violation, score_rows
from autoresearch.harness.handover import Exported

TEMPLATE = Path(__file__).parents[1] / "src/autoresearch/workspace/templates/train.py"


def template(pattern: str):
    spec = importlib.util.spec_from_file_location("train_template", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.WINDOW_PATTERN = pattern
    return module


def timed(fn):
    devices.synchronize(devices.pick_device())
    started = time.perf_counter()
    out = fn()
    devices.synchronize(devices.pick_device())
    return out, time.perf_counter() - started


class ShapeCompiled:
    """The graph compiled by Inductor directly (no Dynamo: it cannot retrace a FlexAttention node), per shape."""

    def __init__(self, graph):
        self.graph, self.compiled = graph, {}

    def __call__(self, idx):
        key = tuple(idx.shape)
        if key not in self.compiled:
            from torch._inductor import compile as inductor_compile

            started = time.perf_counter()
            self.compiled[key] = inductor_compile(self.graph, [idx])
            print(f"inductor compile {key}: {time.perf_counter() - started:.1f}s", flush=True)
        out = self.compiled[key](idx)
        return out[0] if isinstance(out, tuple | list) else out


def one(pattern: str, preset, eval_tokens: int, batch_rows: int, skip_eager: bool) -> dict:
    t = template(pattern)
    device = devices.pick_device()
    torch.manual_seed(0)
    width = math.ceil(t.DEPTH * t.ASPECT_RATIO / t.HEAD_DIM) * t.HEAD_DIM
    config = t.GPTConfig(preset.vocab_size, preset.seq_len, t.DEPTH, width // t.HEAD_DIM, width)
    with torch.device(device):
        model = t.GPT(config, device)
        model.init_weights()
    if device.type == "cuda":  # as train.py does
        model.wte.to(torch.bfloat16)
        model.value_embeds.to(torch.bfloat16)
        model.compile(dynamic=False)
    x = torch.randint(0, preset.vocab_size, (16, preset.seq_len), device=device)
    with devices.autocast(device):  # one training step, as train.py takes before it hands over
        _, compile_s = timed(lambda: model(x, x).backward())
    model.zero_grad(set_to_none=True)
    rows = np.random.default_rng(0).integers(1, preset.vocab_size, (eval_tokens // preset.seq_len, preset.seq_len + 1))
    rows = rows.astype(np.uint16)
    size = batch_size_for(len(rows), batch_rows)
    exported, export_s = timed(lambda: Exported(model, size, preset.seq_len, preset.vocab_size, device))
    weights, weights_s = timed(exported.weights)
    program, load_s = timed(lambda: load_program(exported.document, weights, device))
    graph = program.module
    print(pattern, f"export {export_s:.2f}s, weights {weights_s:.2f}s, load {load_s:.2f}s", flush=True)
    with torch.no_grad(), devices.autocast(device):
        probe = torch.randint(0, preset.vocab_size, (size, preset.seq_len), device=device)
        diff = (model(probe).float() - graph(probe).float()).abs().max().item()
    token_bytes = torch.ones(preset.vocab_size, dtype=torch.int64, device=device)
    out = {
        "pattern": pattern, "compile_first_step_s": compile_s, "export_s": export_s, "weights_s": weights_s,
        "weights_MB": len(weights) / 1e6, "document_KB": len(exported.document) / 1e3, "load_s": load_s,
        "max_abs_logit_diff": diff, "eval_tokens": eval_tokens, "batch_rows": size,
    }  # fmt: skip
    variants = {"train_py_compiled": model, "graph_inductor": ShapeCompiled(program)}
    if not skip_eager:
        variants["graph_eager"] = graph
    for name, fn in variants.items():
        scorer = Scorer(fn, preset.vocab_size, device)
        score, seconds = timed(lambda s=scorer: score_rows(s, rows, token_bytes, size))
        _, again = timed(lambda s=scorer: score_rows(s, rows, token_bytes, size))
        _, probe_s = timed(lambda s=scorer, f=score.per_token: causality_violation(s, rows, f, size))
        out[name] = {"eval_first_s": seconds, "eval_again_s": again, "probe_s": probe_s, "bpb": score.bpb}
        print(pattern, name, out[name], flush=True)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patterns", default="L,SSSL")
    parser.add_argument("--preset", default="h100")
    parser.add_argument("--eval-tokens", type=int, default=0, help="default: the preset's")
    parser.add_argument("--batch-rows", type=int, default=64)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-eager", action="store_true")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    results = [
        one(p, preset, args.eval_tokens or preset.eval_tokens, args.batch_rows, args.skip_eager)
        for p in args.patterns.split(",")
    ]
    if args.out:
        args.out.write_text(
            json.dumps(
                {"torch": torch.__version__, "device": devices.describe(devices.pick_device()), "runs": results},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
