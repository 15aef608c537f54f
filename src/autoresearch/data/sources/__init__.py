"""Data sources by name: `python-source`, `local:PATH`, and the hub datasets `climbmix`, `fineweb-edu`."""

from __future__ import annotations

from pathlib import Path

from autoresearch.config.presets import Preset
from autoresearch.data.sources.base import TRAIN, VAL, Part, Source
from autoresearch.errors import ConfigError

# Validation text to set aside per evaluation token: about 3-4 bytes per token for code and prose
# at these vocabulary sizes, so 5 leaves room; prepare checks that enough tokens came out.
VAL_BYTES_PER_TOKEN = 5
# A validation document contributes at most a piece of about a row (4 characters per token) from its middle,
# so the evaluation spans hundreds of documents instead of a few long ones (BENCHMARKS.md, issue 9).
VAL_PIECE_CHARS_PER_TOKEN = 4

__all__ = ["TRAIN", "VAL", "Part", "Source", "dataset_names", "make_source", "smaller_presets"]


def dataset_names() -> list[str]:
    from autoresearch.data.sources.hub import HUB_DATASETS

    return ["python-source", "local:PATH", *HUB_DATASETS]


def smaller_presets(preset: Preset) -> dict[str, int]:
    """The built-in presets with a smaller evaluation set than `preset`: name -> validation bytes."""
    from autoresearch.config.presets import PRESETS

    return {p.name: p.eval_tokens * VAL_BYTES_PER_TOKEN for p in PRESETS.values() if p.eval_tokens < preset.eval_tokens}


def make_source(dataset: str, preset: Preset, *, root: Path | None = None, shards: int | None = None) -> Source:
    val_bytes = preset.eval_tokens * VAL_BYTES_PER_TOKEN
    val_piece = preset.seq_len * VAL_PIECE_CHARS_PER_TOKEN
    smaller = smaller_presets(preset)
    if root is not None and dataset != "python-source":
        raise ConfigError("--root applies to --dataset python-source only")
    if shards is not None and (dataset == "python-source" or dataset.startswith("local:")):
        raise ConfigError(  # it was ignored: the whole corpus is prepared, up to the preset's size
            "--shards applies to the downloaded datasets only (climbmix, fineweb-edu)",
            hint="leave it out: this dataset is prepared whole, up to the preset's size",
        )
    if dataset == "python-source":
        from autoresearch.data.sources.python_source import PythonSource

        return PythonSource(val_bytes, preset.max_corpus_bytes, val_piece, root, smaller=smaller)
    if dataset.startswith("local:"):
        from autoresearch.data.sources.local import LocalSource

        named = dataset.removeprefix("local:")
        if not named.strip():  # Path("") is the current directory: a home folder would be read as the corpus
            raise ConfigError(
                "--dataset local: names no path", hint="use local:/path/to/dir (or local:/path/to/file.txt)"
            )
        path = Path(named)
        return LocalSource(path, val_bytes, preset.max_corpus_bytes, val_piece, smaller=smaller)
    from autoresearch.data.sources.hub import HUB_DATASETS, HubSource

    if dataset in HUB_DATASETS:
        return HubSource(HUB_DATASETS[dataset], shards)
    raise ConfigError(f"unknown dataset {dataset!r}", hint=f"choose one of: {', '.join(dataset_names())}")
