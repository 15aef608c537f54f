"""Forward+backward time of one attention layer at the reference shape, for each kernel PyTorch offers.

    python3 bench/attention.py [--batch 128] [--window 1024] [--only cudnn-frontend]

Shape: batch x 4 heads x 2048 tokens x 128 channels, bf16 (one micro-batch of the reference model).
"Window W" means each query sees itself and the W - 1 tokens before it, as train.py's SHORT_WINDOW.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench


def bench(name: str, fn, q, k, v, full_flops: float, work: float) -> None:
    grad = torch.randn_like(q)

    def step():
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v).backward(grad)

    try:
        ms = do_bench(step, warmup=100, rep=400, return_mode="median")
        fwd = do_bench(lambda: fn(q, k, v), warmup=50, rep=200, return_mode="median")
    except Exception as exc:  # a backend that cannot run this shape is a result too
        print(f"{name:42s} failed: {type(exc).__name__}: {str(exc)[:120]}")
        return
    tflops = full_flops * work * 3.5 / (ms * 1e-3) / 1e12
    print(f"{name:42s} fwd+bwd {ms:6.2f} ms  fwd {fwd:5.2f} ms  {tflops:5.0f} TFLOP/s on the work done")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--only", choices=["cudnn-frontend"], help="time only the cuDNN frontend's kernels")
    args = parser.parse_args()
    B, H, S, D, W = args.batch, 4, 2048, 128, args.window
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    full = 4 * B * H * S * S * D  # forward FLOPs without a mask; backward is 2.5x
    causal_work = 0.5
    window_work = (W * S - W * W / 2) / (S * S)

    def sdpa(backend):
        def fn(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return fn

    bench("SDPA cuDNN, causal", sdpa(SDPBackend.CUDNN_ATTENTION), q, k, v, full, causal_work)
    cudnn_frontend(q, k, v, W, full, causal_work, window_work)
    if args.only:
        return
    bench("SDPA flash (FA2), causal", sdpa(SDPBackend.FLASH_ATTENTION), q, k, v, full, causal_work)
    bench("SDPA efficient, causal", sdpa(SDPBackend.EFFICIENT_ATTENTION), q, k, v, full, causal_work)

    mask = create_block_mask(
        lambda b, h, qi, ki: (qi >= ki) & (qi - ki < W), B=None, H=None, Q_LEN=S, KV_LEN=S, device="cuda"
    )
    causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, B=None, H=None, Q_LEN=S, KV_LEN=S, device="cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    bench("flex, causal", lambda q, k, v: flex(q, k, v, block_mask=causal), q, k, v, full, causal_work)
    bench(f"flex, window {W}", lambda q, k, v: flex(q, k, v, block_mask=mask), q, k, v, full, window_work)
    for opts in (
        {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
        {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
        {"BWD_BLOCK_M1": 64, "BWD_BLOCK_N1": 128, "BWD_BLOCK_M2": 128, "BWD_BLOCK_N2": 64, "num_warps": 8},
    ):
        label = ",".join(f"{k.replace('BLOCK_', '')}={v}" for k, v in opts.items())
        bench(
            f"flex, window {W}, {label}"[:42],
            lambda q, k, v, o=opts: flex(q, k, v, block_mask=mask, kernel_options=o),
            q,
            k,
            v,
            full,
            window_work,
        )

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        print("varlen_attn: not in this PyTorch")
        return
    cu = torch.arange(0, (B + 1) * S, S, device="cuda", dtype=torch.int32)

    def varlen(window):
        def fn(q, k, v):
            flat = [t.transpose(1, 2).reshape(B * S, H, D) for t in (q, k, v)]
            out = varlen_attn(*flat, cu, cu, S, S, window_size=window)
            return out.view(B, S, H, D).transpose(1, 2)

        return fn

    bench("varlen (FA2), causal", varlen((-1, 0)), q, k, v, full, causal_work)
    bench(f"varlen (FA2), window {W}", varlen((W - 1, 0)), q, k, v, full, window_work)


def cudnn_frontend(q, k, v, W: int, full: float, causal_work: float, window_work: float) -> None:
    """cuDNN's own sliding-window kernels through the nvidia-cudnn-frontend package, checked then timed."""
    try:
        import cudnn
        from cudnn.sdpa.fwd.torch_op import sdpa as cudnn_sdpa
    except ImportError as exc:
        print(f"cudnn frontend: not importable ({exc})")
        return
    print(f"cudnn frontend {cudnn.__version__}, backend {cudnn.backend_version()}")
    # Which left bound gives "itself and the W - 1 tokens before it"? Compare with a dense mask.
    w = 64
    small = [t.detach()[:2, :, :256].clone().requires_grad_() for t in (q, k, v)]
    pos = torch.arange(256, device="cuda")
    dense = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < w)
    ref = F.scaled_dot_product_attention(*(t.float() for t in small), attn_mask=dense)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, small, grad)
    for left in (w - 1, w):
        out = cudnn_sdpa(*small, is_causal=True, window_left=left, return_lse=True)[0]
        grads = torch.autograd.grad(out, small, grad.bfloat16())
        err = max((a.float() - b).abs().max().item() for a, b in zip((out, *grads), (ref, *ref_grads), strict=True))
        print(f"cudnn frontend window_left={left}: max abs error vs dense mask of window {w}: {err:.4f}")

    def fe(window_left):
        return lambda q, k, v: cudnn_sdpa(q, k, v, is_causal=True, window_left=window_left, return_lse=True)[0]

    bench("cudnn frontend, causal", fe(-1), q, k, v, full, causal_work)
    for left in (W - 1, W):
        bench(f"cudnn frontend, window_left {left}", fe(left), q, k, v, full, window_work)


if __name__ == "__main__":
    main()
