"""Where a training step's GPU time goes, for train.py at the reference shape (random tokens, no data).

    PYTHONPATH=src python3 bench/profile_step.py [--full] [NAME=VALUE ...]

Builds the model and optimizer from the template train.py (constants overridden as given), compiles,
warms up, then times forward+backward and the optimizer step with CUDA events and prints the top
kernels of a profiled step. Also times the harness's evaluation over the h100 preset's eval size.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.checkpoint
from torch.profiler import ProfilerActivity, profile

from autoresearch.config.presets import get_preset
from autoresearch.evaluator.score import Scorer, causality_violation, score_rows
from autoresearch.workspace.constants import set_constants
from autoresearch.workspace.init import template

REFERENCE_SHAPE = {
    "DEPTH": 8,
    "ASPECT_RATIO": 64,
    "HEAD_DIM": 128,
    "WINDOW_PATTERN": "SSSL",
    "SHORT_WINDOW": 1024,
    "TOTAL_BATCH_SIZE": 2**19,
    "DEVICE_BATCH_SIZE": 128,
}


def load_train_module(overrides: dict):
    path = Path(tempfile.mkdtemp()) / "train_bench.py"
    path.write_text(set_constants(template("train.py"), overrides))
    spec = importlib.util.spec_from_file_location("train_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_variants(t, variants: set[str]) -> None:
    """Experimental changes to the template's model, to measure before adopting them."""
    import torch.nn.functional as F

    if "coord" in variants:
        torch._inductor.config.coordinate_descent_tuning = True
    if "aggressive" in variants:  # fuse nodes even when they share no memory traffic
        torch._inductor.config.aggressive_fusion = True
    if "benchfusion" in variants:  # time each fusion decision instead of trusting the heuristic
        torch._inductor.config.benchmark_fusion = True
    if "autotune" in variants:  # Triton GEMM templates compete with cuBLAS and may take elementwise epilogues
        torch._inductor.config.max_autotune = True
    if "cudnnfe" in variants:  # S layers on cuDNN's sliding-window kernel (nvidia-cudnn-frontend) instead of Flex
        from cudnn.sdpa.fwd.torch_op import sdpa as cudnn_sdpa

        def windowed(q, k, v, block_mask):
            return cudnn_sdpa(q, k, v, is_causal=True, window_left=t.SHORT_WINDOW, return_lse=True)[0]

        t.flex_attention = windowed
    if "bf16stream" in variants:  # the residual stream in bf16: RMSNorm under autocast may return fp32
        t.norm = lambda x: F.rms_norm(x, (x.size(-1),)).to(torch.bfloat16 if torch.is_autocast_enabled() else x.dtype)
    if "lossckpt" in variants:  # recompute the soft-cap in the backward instead of saving fp32 logits

        def softcapped_loss(logits, targets):
            logits = t.LOGIT_SOFTCAP * torch.tanh(logits.float() / t.LOGIT_SOFTCAP)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

        def head_forward(self, x, targets=None):
            logits = self.proj(t.norm(x))
            if targets is None:
                return t.LOGIT_SOFTCAP * torch.tanh(logits.float() / t.LOGIT_SOFTCAP)
            return torch.utils.checkpoint.checkpoint(softcapped_loss, logits, targets, use_reentrant=False)

        t.Head.forward = head_forward
    if "sigmoidcap" in variants:  # soft-cap as c * (2 sigmoid(2x/c) - 1): tanh itself, with a cheaper lowering?

        def capped_head_forward(self, x, targets=None):
            logits = self.proj(t.norm(x)).float()
            logits = t.LOGIT_SOFTCAP * (2 * torch.sigmoid(logits * (2 / t.LOGIT_SOFTCAP)) - 1)
            if targets is None:
                return logits
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

        t.Head.forward = capped_head_forward
    if "qkv" in variants:

        def forward(self, x, ve, cos, sin, mask):
            B, T, C = x.shape
            w = torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])
            q, k, v = F.linear(x, w).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
            if ve is not None:
                gate = 2 * torch.sigmoid(self.ve_gate(x[..., : t.VE_GATE_CHANNELS]))
                v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
            q, k = t.norm(t.rotate(q, cos, sin)), t.norm(t.rotate(k, cos, sin))
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

        t.Attention.forward = forward


def timed(fn, repeat: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides", nargs="*", help="NAME=VALUE constants for train.py")
    parser.add_argument("--eval", action="store_true", help="also time the evaluation")
    variants_help = "comma list of experimental changes (see apply_variants) and noprofile"
    parser.add_argument("--variant", default="", help=variants_help)
    args = parser.parse_args()
    overrides = dict(REFERENCE_SHAPE)
    for item in args.overrides:
        name, value = item.split("=", 1)
        overrides[name] = ast.literal_eval(value)
    t = load_train_module(overrides)
    variants = set(filter(None, args.variant.split(",")))
    apply_variants(t, variants)
    device = torch.device("cuda")
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high")
    preset = get_preset("h100")
    V, T, B = preset.vocab_size, preset.seq_len, t.DEVICE_BATCH_SIZE
    width = -(-t.DEPTH * t.ASPECT_RATIO // t.HEAD_DIM) * t.HEAD_DIM
    config = t.GPTConfig(V, T, t.DEPTH, width // t.HEAD_DIM, width)
    with torch.device(device):
        model = t.GPT(config, device)
        model.init_weights()
    model.wte.to(torch.bfloat16)
    model.value_embeds.to(torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        probe = torch.randint(0, V, (1, T), device=device)
        seen = {}
        hook = model.blocks[0].register_forward_hook(lambda m, i, o: seen.update(block_output=o.dtype))
        model(probe)
        hook.remove()
        print(f"dtypes under autocast: norm(wte) {t.norm(model.wte(probe)).dtype}, {seen}")
    opt = t.MuonAdamW(model, compile_update="eagermuon" not in variants)
    cmodel = torch.compile(model, dynamic=False)
    accum = t.TOTAL_BATCH_SIZE // T // B
    x = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device)

    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = cmodel(x, y)
        loss.backward()

    def opt_step():
        opt.step(1.0, 0.95, 0.1)
        opt.zero_grad()

    started = time.time()
    fwd_bwd()
    torch.cuda.synchronize()
    first_fb = time.time() - started
    opt_step()
    torch.cuda.synchronize()
    print(f"first forward+backward {first_fb:.1f}s, first optimizer step {time.time() - started - first_fb:.1f}s")
    for _ in range(2):
        for _ in range(accum):
            fwd_bwd()
        opt_step()
    torch.cuda.synchronize()
    print(f"compile + 3 steps: {time.time() - started:.1f}s")
    print(torch._dynamo.utils.compile_times())
    fb = timed(fwd_bwd, 10)
    op = timed(lambda: (fwd_bwd(), opt_step()), 5) - fb
    step = accum * fb + op
    flops = model.flops_per_token()
    tokens_per_s = t.TOTAL_BATCH_SIZE / (step / 1e3)
    mfu = 100 * flops * tokens_per_s / 989.5e12
    print(f"fwd+bwd {fb:.1f} ms x {accum}, optimizer {op:.1f} ms, step {step:.1f} ms")
    print(f"-> {tokens_per_s / 1e6:.3f}M tok/s, MFU {mfu:.1f}%")
    if "noprofile" in variants:
        return
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fwd_bwd()
        opt_step()
        torch.cuda.synchronize()
    rows = int(os.environ.get("PROFILE_ROWS", "30"))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=110))

    if args.eval:
        rows = np.random.default_rng(0).integers(1, V, (preset.eval_rows, T + 1)).astype(np.uint16)
        token_bytes = torch.full((V,), 3, dtype=torch.int64, device=device)
        model.eval()
        for name, m in (("compiled", cmodel), ("eager", model)):
            scorer = Scorer(m, V, device)
            for bs in (64, 128):
                torch.cuda.synchronize()
                started = time.time()
                score_rows(scorer, rows[: bs * 4], token_bytes, bs)  # warm-up / compile
                torch.cuda.synchronize()
                warm = time.time() - started
                started = time.time()
                score_rows(scorer, rows, token_bytes, bs)
                torch.cuda.synchronize()
                print(f"eval {name} batch {bs}: first {warm:.1f}s, full {time.time() - started:.1f}s")
        started = time.time()
        causality_violation(Scorer(cmodel, V, device), rows[:64])
        torch.cuda.synchronize()
        print(f"probe: {time.time() - started:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
