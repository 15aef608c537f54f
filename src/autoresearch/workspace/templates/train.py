"""GPT pretraining for a fixed wall-clock budget: the one file the research agent edits.

Everything that decides how good the model gets is here: the architecture, the optimizer, the
schedules and the training loop. The data, the clock and the metric (validation bits per byte) belong
to an evaluator in another process: it serves the batches, times the run, and scores the model's
exported graph (so the model's forward must export with torch.export: no Python side effects, no
data-dependent Python branches). Run it in a workspace made by
`autoresearch init`:  python train.py
"""

import gc
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from autoresearch import harness

# ----------------------------------------------------------------------------------------------------
# Hyperparameters. Edit them directly; each comment says what it does and a sensible range.

# Model shape
DEPTH = 8  # transformer blocks (2-24); the width follows from ASPECT_RATIO
ASPECT_RATIO = 64  # width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM (32-128)
HEAD_DIM = 128  # channels per attention head (32-128)
WINDOW_PATTERN = "L"  # attention span per layer, cycled: L = whole row, S = SHORT_WINDOW; last layer is L
SHORT_WINDOW = 512  # tokens an S layer sees (64 - sequence length); S runs on FlexAttention, slower than L on H100
ROPE_BASE = 200_000  # rotary embedding base; public runs found 200K better than 10K (1e4-1e6)
LOGIT_SOFTCAP = 15.0  # logits are squashed into +-LOGIT_SOFTCAP by tanh (10-30)

# Optimization
TOTAL_BATCH_SIZE = 2**18  # tokens per optimizer step (2**12-2**20): smaller means more steps in the budget
DEVICE_BATCH_SIZE = 128  # rows per forward/backward; gradients accumulate up to TOTAL_BATCH_SIZE
MATRIX_LR = 0.04  # Muon learning rate for the matrices inside the blocks (0.01-0.1)
EMBEDDING_LR = 0.8  # AdamW learning rate for token and value embeddings (0.1-2)
UNEMBEDDING_LR = 0.004  # AdamW learning rate for the output head (0.001-0.02)
SCALAR_LR = 0.5  # AdamW learning rate for the per-layer residual scalars (0.1-1)
ADAM_BETAS = (0.8, 0.95)  # AdamW momentum and second-moment decay
WEIGHT_DECAY = 0.2  # Muon weight decay, itself decayed linearly to 0 over the run (0-0.5)
WARMUP_RATIO = 0.0  # fraction of the budget spent raising the learning rate from 0 (0-0.1)
WARMDOWN_RATIO = 0.6  # fraction of the budget at the end spent lowering it (0.2-0.9)
FINAL_LR_FRAC = 0.0  # learning rate at the very end, as a fraction of the peak (0-0.1)
SEED = 42  # initialisation seed
COMPILE = True  # torch.compile (off the budget): ~1.45x the steps on a CPU, where it needs a C++ compiler (True/False)

VE_GATE_CHANNELS = 32  # input channels that gate the value embeddings, at most the width (8-64)


# ----------------------------------------------------------------------------------------------------
# Model


@dataclass
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    n_embd: int


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embed(layer, n_layer):
    """Value embeddings on every other layer, always including the last."""
    return layer % 2 == (n_layer - 1) % 2


def rotate(x, cos, sin):
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def layer_windows(n_layer, seq_len):
    windows = [seq_len if WINDOW_PATTERN[i % len(WINDOW_PATTERN)] == "L" else SHORT_WINDOW for i in range(n_layer)]
    windows[-1] = seq_len
    return [min(w, seq_len) for w in windows]


def sliding_window_mask(window, seq_len, device):
    def keep(b, h, q, kv):
        return (q >= kv) & (q - kv < window)

    return create_block_mask(keep, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        gate_channels = min(VE_GATE_CHANNELS, config.n_embd)
        self.ve_gate = (
            nn.Linear(gate_channels, config.n_head, bias=False) if has_value_embed(layer, config.n_layer) else None
        )

    def forward(self, x, ve, cos, sin, mask):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:  # mix a per-token value embedding into v, gated per head (ResFormer-style)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate.in_features]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = norm(rotate(q, cos, sin)), norm(rotate(k, cos, sin))  # QK-norm keeps attention logits tame
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif isinstance(mask, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = flex_attention(q, k, v, block_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = Attention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, x0, resid_lambda, x0_lambda, ve, cos, sin, mask):
        x = resid_lambda * x + x0_lambda * x0  # how much of the stream and of the input embedding to read
        x = x + self.attn(norm(x), ve, cos, sin, mask)
        return x + self.mlp(norm(x))


class Head(nn.Module):
    """Final norm, output projection and soft-capped logits; the mean cross-entropy if targets are given."""

    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, x, targets=None):
        logits = self.proj(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class GPT(nn.Module):
    def __init__(self, config, device):
        super().__init__()
        self.config = config
        V, C, L = config.vocab_size, config.n_embd, config.n_layer
        self.wte = nn.Embedding(V, C)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(L)])
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, C) for i in range(L) if has_value_embed(i, L)})
        self.head = Head(config)
        # Per-layer scalars: how much of the residual stream and of the input embedding each block reads.
        self.resid_lambdas = nn.Parameter(torch.ones(L))
        self.x0_lambdas = nn.Parameter(torch.full((L,), 0.1))
        half = (C // config.n_head) // 2
        freqs = torch.outer(
            torch.arange(config.seq_len, dtype=torch.float32), ROPE_BASE ** (-torch.arange(half) / half)
        )
        self.register_buffer("cos", freqs.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", freqs.sin()[None, :, None, :], persistent=False)
        # Sliding windows: FlexAttention block masks on CUDA, a dense boolean mask elsewhere.
        self.windows = layer_windows(L, config.seq_len)
        masks = {}
        for w in set(self.windows) - {config.seq_len}:
            if device.type == "cuda":
                masks[w] = sliding_window_mask(w, config.seq_len, device)
            else:
                pos = torch.arange(config.seq_len, device=device)
                masks[w] = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < w)
        self.masks = [masks.get(w) for w in self.windows]

    @torch.no_grad()
    def init_weights(self):
        C = self.config.n_embd
        bound = 3**0.5 * C**-0.5  # uniform with std 1/sqrt(C)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.head.proj.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)

    def flops_per_token(self):
        """Training FLOPs per token: 6 per non-embedding weight, plus attention over each layer's window."""
        embedding = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        matmul = 6 * (sum(p.numel() for p in self.parameters()) - embedding)
        attention = sum(12 * self.config.n_embd * w for w in self.windows)
        return matmul + attention

    def forward(self, idx, targets=None):
        x = norm(self.wte(idx))
        x0 = x
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)  # fp32 tables make q, k fp32: 4% slower (H100)
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, x0, self.resid_lambdas[i], self.x0_lambdas[i], ve, cos, sin, self.masks[i])
        return self.head(x, targets)


# ----------------------------------------------------------------------------------------------------
# Optimizer: Muon for the matrices inside the blocks, AdamW for embeddings, head and scalars.

# Polar Express (Amsel et al. 2025): five odd-polynomial steps that push every singular value of the
# update towards 1, i.e. approximately orthogonalize it; the norm gets a 2% safety margin.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def muon_update(params, grads, momentum_buf, variance_buf, momentum, lr, wd, beta2):
    """One Muon step for a stack of same-shape matrices (leading dim), in place on `params`."""
    momentum_buf.lerp_(grads, 1 - momentum)
    g = grads.lerp(momentum_buf, momentum)  # Nesterov
    wide = g.size(-2) <= g.size(-1)
    x = g.bfloat16() if g.is_cuda else g  # bf16 matmuls are fast on GPUs only
    x = x if wide else x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    for a, b, c in POLAR_EXPRESS:
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    g = (x if wide else x.mT).float()
    # NorMuon: equalise the update's scale along its longer side with a running second moment, keeping its norm.
    reduce = -1 if g.size(-2) >= g.size(-1) else -2
    row_sq = g.square().mean(dim=reduce, keepdim=True)
    variance_buf.lerp_(row_sq, 1 - beta2)
    scale = variance_buf.clamp_min(1e-10).rsqrt()
    before = row_sq.sum(dim=(-2, -1), keepdim=True).sqrt()
    after = (row_sq * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * scale * (before / after.clamp_min(1e-10))
    # Cautious weight decay: only shrink weights the update is already moving towards zero.
    decay = (g * params >= 0).to(g.dtype)
    params.sub_(lr * (g + wd * params * decay))


class MuonAdamW:
    def __init__(self, model, compile_update):
        scale = (model.config.n_embd / 768) ** -0.5  # AdamW rates were tuned at width 768
        adam_groups = [
            dict(params=[model.head.proj.weight], lr=UNEMBEDDING_LR * scale),
            dict(params=[model.wte.weight, *[e.weight for e in model.value_embeds.values()]], lr=EMBEDDING_LR * scale),
            dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
            dict(params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
        ]
        fused = next(model.parameters()).device.type in ("cuda", "cpu")
        self.adam = torch.optim.AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0, fused=fused)
        matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
        shapes = sorted({tuple(p.shape) for p in matrices})
        self.muon_groups = []
        for shape in shapes:
            group = [p for p in matrices if tuple(p.shape) == shape]
            var_shape = (len(group), shape[0], 1) if shape[0] >= shape[1] else (len(group), 1, shape[1])
            self.muon_groups.append(
                dict(
                    params=group,
                    momentum_buf=torch.zeros(len(group), *shape, device=group[0].device),
                    variance_buf=torch.zeros(var_shape, device=group[0].device),
                    lr_scale=max(1.0, shape[0] / shape[1]) ** 0.5,
                )
            )
        for group in self.adam.param_groups:
            group["initial_lr"] = group["lr"]
        # Scalars live in 0-d CPU tensors so a compiled update never recompiles when they change.
        self.hyper = {k: torch.tensor(0.0) for k in ("momentum", "lr", "wd", "beta2")}
        self.update = torch.compile(muon_update, dynamic=False, fullgraph=True) if compile_update else muon_update

    @torch.no_grad()
    def step(self, lr_multiplier, muon_momentum, weight_decay):
        for group in self.adam.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier
        self.adam.step()
        self.hyper["momentum"].fill_(muon_momentum)
        self.hyper["wd"].fill_(weight_decay)
        self.hyper["beta2"].fill_(0.95)
        for group in self.muon_groups:
            self.hyper["lr"].fill_(MATRIX_LR * lr_multiplier * group["lr_scale"])
            params = group["params"]
            stacked = torch.stack([p.detach() for p in params])
            grads = torch.stack([p.grad for p in params])
            self.update(stacked, grads, group["momentum_buf"], group["variance_buf"], **self.hyper)
            torch._foreach_copy_([p.detach() for p in params], list(stacked.unbind(0)))

    def zero_grad(self):
        self.adam.zero_grad(set_to_none=True)
        for group in self.muon_groups:
            for p in group["params"]:
                p.grad = None


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1 - WARMDOWN_RATIO:
        return 1.0
    left = (1 - progress) / WARMDOWN_RATIO
    return left + (1 - left) * FINAL_LR_FRAC


def muon_momentum(step):
    return 0.85 + 0.10 * min(1.0, step / 300)  # warm momentum up from 0.85 to 0.95 over 300 steps


# ----------------------------------------------------------------------------------------------------
# Training

if __name__ == "__main__":
    run = harness.start()  # the locked apparatus: data, device, clock, metric
    device = run.device
    cuda = device.type == "cuda"
    torch.manual_seed(SEED)
    torch.set_float32_matmul_precision("high")

    width = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
    config = GPTConfig(run.vocab_size, run.seq_len, DEPTH, width // HEAD_DIM, width)
    with torch.device(device):
        model = GPT(config, device)
        model.init_weights()
    if cuda:  # bf16 embeddings halve their memory traffic; the matrices stay fp32 under autocast
        model.wte.to(torch.bfloat16)
        model.value_embeds.to(torch.bfloat16)
    optimizer = MuonAdamW(model, compile_update=COMPILE and cuda)  # compiled, Muon's update is faster on GPUs only
    if COMPILE and device.type in ("cuda", "cpu"):  # one graph for the whole model: 2.5% faster than block by block
        model.compile(dynamic=False)
    run.set_model(model)  # the evaluator scores this model: its graph is exported now, its weights at the end

    rows_per_step = TOTAL_BATCH_SIZE // run.seq_len
    assert rows_per_step % DEVICE_BATCH_SIZE == 0, "TOTAL_BATCH_SIZE must be whole device batches"
    accum_steps = rows_per_step // DEVICE_BATCH_SIZE
    batches = run.train_batches(DEVICE_BATCH_SIZE)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {DEPTH} layers, width {width}, {params_m:.1f}M parameters, windows {model.windows}")
    print(f"batch: {TOTAL_BATCH_SIZE:,} tokens/step = {accum_steps} x {DEVICE_BATCH_SIZE} rows of {run.seq_len}")

    while not run.time_up:
        for _ in range(accum_steps):
            x, y = next(batches)
            with run.autocast():
                loss = model(x, y)
            (loss / accum_steps).backward()
        progress = run.progress
        optimizer.step(lr_multiplier(progress), muon_momentum(run.step), WEIGHT_DECAY * (1 - progress))
        optimizer.zero_grad()
        run.step_done(loss)
        if run.step == 1:  # Python's GC otherwise pauses training for ~0.5 s now and then (nanochat)
            gc.collect()
            gc.freeze()
            gc.disable()

    run.finish(flops_per_token=model.flops_per_token())
