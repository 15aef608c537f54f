"""Presets: the apparatus constants of an experiment, as data.

A preset fixes what every experiment in a workspace must share to be comparable: sequence length,
vocabulary, evaluation set size and the wall-clock budget. It also names a starting point for the
model constants in train.py, sized for the hardware the preset is meant for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from autoresearch.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    seq_len: int  # tokens per row seen by the model; evaluation uses the same length
    vocab_size: int  # BPE vocabulary, special tokens included
    budget_seconds: float  # default training wall-clock budget (init --budget overrides)
    eval_tokens: int  # validation tokens scored per evaluation; a multiple of seq_len
    untimed_steps: int  # first optimizer steps kept off the clock: compilation and warm-up
    tokenizer_train_chars: int  # characters of training text the BPE is learned from
    max_corpus_bytes: int | None  # cap on text read from python-source / local corpora
    train_defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    needs_cuda: bool = False  # its model and rows are sized for a datacenter GPU: `init` refuses it elsewhere

    def __post_init__(self) -> None:
        if self.eval_tokens % self.seq_len:
            raise ConfigError(f"preset {self.name}: eval_tokens must be a multiple of seq_len")
        if not 256 < self.vocab_size <= 65535:
            raise ConfigError(f"preset {self.name}: vocab_size must be in (256, 65535] to fit uint16 shards")

    @property
    def eval_rows(self) -> int:
        return self.eval_tokens // self.seq_len

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "budget_seconds": self.budget_seconds,
            "eval_tokens": self.eval_tokens,
            "untimed_steps": self.untimed_steps,
            "tokenizer_train_chars": self.tokenizer_train_chars,
            "max_corpus_bytes": self.max_corpus_bytes,
        }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="h100",
            description="One datacenter GPU, as the reference: 2048-token rows, 5-minute budget",
            seq_len=2048,
            vocab_size=8192,
            budget_seconds=300,
            eval_tokens=40 * 2**19,
            untimed_steps=3,
            tokenizer_train_chars=400_000_000,
            max_corpus_bytes=None,
            train_defaults=MappingProxyType(
                {
                    "DEPTH": 8,
                    "ASPECT_RATIO": 64,
                    "HEAD_DIM": 128,
                    "TOTAL_BATCH_SIZE": 2**18,
                    "DEVICE_BATCH_SIZE": 128,
                }
            ),
            needs_cuda=True,
        ),
        Preset(
            name="tiny",
            description="A laptop CPU: 256-token rows, small vocabulary, 1-minute budget",
            seq_len=256,
            vocab_size=2048,
            budget_seconds=60,
            eval_tokens=2**16,
            untimed_steps=1,
            tokenizer_train_chars=8_000_000,
            max_corpus_bytes=64 * 2**20,
            train_defaults=MappingProxyType(
                {  # sized for signal, not loss: seed-to-seed noise ~0.01 bpb (BENCHMARKS.md, issue 9)
                    "DEPTH": 3,
                    "ASPECT_RATIO": 32,  # width 96: 3 heads of 32
                    "HEAD_DIM": 32,
                    "TOTAL_BATCH_SIZE": 2**13,
                    "DEVICE_BATCH_SIZE": 32,
                }
            ),
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}", hint=f"choose one of: {', '.join(PRESETS)}") from None


def default_preset_name() -> str:
    """`h100` where CUDA is present, `tiny` elsewhere."""
    import torch

    return "h100" if torch.cuda.is_available() else "tiny"


def default_dataset_name() -> str:
    import torch

    return "climbmix" if torch.cuda.is_available() else "python-source"
