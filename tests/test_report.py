"""`autoresearch report`: the improving chain, progress.png and report.md from a ledger."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.loop.ledger import CRASH, DISCARD, KEEP, RUNNING, Experiment, Ledger
from autoresearch.report import make_report, plot_progress, progress_figure, render_report
from autoresearch.report.summary import chain, running_best, shorten

T0 = 1_700_000_000.0
BASE_SOURCE = "import torch\nLR = 0.04\nWARMUP = 0\nACT = 'relu'\n"
WARMUP_SOURCE = BASE_SOURCE.replace("WARMUP = 0", "WARMUP = 200")
BEST_SOURCE = WARMUP_SOURCE.replace("ACT = 'relu'", "ACT = 'swiglu'")


def exp(id: int, status: str, val_bpb: float | None, description: str, **kw) -> Experiment:
    """A finished experiment: started every 10 minutes, 500 s long, 300 s of it training."""
    defaults = dict(
        kind="experiment",
        parent="abc",
        agent="claude",
        model="claude-x",
        started_at=T0 + 600 * (id - 1),
        finished_at=T0 + 600 * (id - 1) + 500,
        training_seconds=300.0,
        total_seconds=400.0,
        input_tokens=1000,
        output_tokens=100,
        cost_usd=0.25,
        source=BASE_SOURCE,
        runs=f"[{val_bpb}]" if val_bpb is not None else "[]",
    )
    return Experiment(id=id, status=status, description=description, val_bpb=val_bpb, **{**defaults, **kw})


def history() -> list[Experiment]:
    return [
        exp(1, KEEP, 1.0, "baseline", kind="baseline", reason="the reference"),
        exp(2, DISCARD, 1.003, "raise the learning rate to 0.08", reason="worse"),
        exp(
            3, KEEP, 0.995, "warm up the learning rate for 200 steps", reason="better by 3 sigma", source=WARMUP_SOURCE
        ),
        exp(
            4,
            CRASH,
            None,
            "double the batch size",
            reason="",
            training_seconds=None,
            total_seconds=20.0,
            log_tail="step 0\nTraceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory\n",
        ),
        exp(
            5,
            DISCARD,
            0.9991,
            "tie the embeddings",
            agent="codex",
            model="gpt-y",
            cost_usd=None,
            input_tokens=5000,
            output_tokens=700,
        ),
        exp(
            6,
            KEEP,
            0.99,
            "SwiGLU activation " + "in the MLP, with a much longer explanation " * 5,
            reason="better | re-run twice",
            runs="[0.9895, 0.9905]",
            source=BEST_SOURCE,
            agent="codex",
            model="gpt-y",
            cost_usd=None,
            input_tokens=7000,
            output_tokens=900,
        ),
        exp(7, DISCARD, 1.4, "a change that blew up the loss"),
        exp(8, RUNNING, None, "still going", finished_at=None, training_seconds=None, total_seconds=None),
    ]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ledger = Ledger(tmp_path)
    for e in history():
        ledger.insert(e)
    ledger.close()
    return tmp_path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# -- the chain --------------------------------------------------------------------------------------


def test_chain_and_running_best():
    exps = history()
    steps = chain(exps)
    assert [s.exp.id for s in steps] == [1, 3, 6]
    assert [s.previous for s in steps] == [None, 1.0, 0.995]
    assert steps[1].delta == pytest.approx(-0.005)
    assert steps[2].relative == pytest.approx(0.99 / 0.995 - 1)
    # the running experiment is not finished; a crash keeps the best where it was
    assert running_best(exps) == [(1, 1.0), (2, 1.0), (3, 0.995), (4, 0.995), (5, 0.995), (6, 0.99), (7, 0.99)]


def test_shorten():
    assert shorten("  short  one\nsecond line") == "short one"
    long = shorten("x" * 200, 20)
    assert len(long) == 20 and long.endswith("…")


# -- make_report ------------------------------------------------------------------------------------


def test_make_report_writes_both_files(workspace: Path):
    plot, report = make_report(workspace)
    assert plot == workspace / "progress.png" and report == workspace / "report.md"
    width, height = png_size(plot)
    assert 800 <= width <= 3000 and 500 <= height <= 2000
    assert plot.stat().st_size > 20_000  # a real chart, not an empty canvas
    assert "# Research report" in report.read_text()


def test_make_report_without_ledger(tmp_path: Path):
    with pytest.raises(AutoresearchError, match="no experiment ledger") as info:
        make_report(tmp_path)
    assert "autoresearch run" in str(info.value)
    assert not (tmp_path / ".autoresearch").exists()  # checking did not create an empty ledger


# -- the plot ---------------------------------------------------------------------------------------


def _by_gid(fig, gid: str):
    ax = fig.axes[0]
    return [a for a in [*ax.collections, *ax.lines, *ax.texts] if a.get_gid() == gid]


def test_plot_draws_points_best_line_and_labels():
    fig = progress_figure(history())
    (kept,) = _by_gid(fig, "kept")
    assert [tuple(p) for p in kept.get_offsets()] == [(1, 1.0), (3, 0.995), (6, 0.99)]
    (discarded,) = _by_gid(fig, "discarded")
    assert sorted(x for x, _ in discarded.get_offsets()) == [2, 5]  # #7 is far off the chart...
    (over,) = _by_gid(fig, "over")
    assert [x for x, _ in over.get_offsets()] == [7]  # ...and marked on the top edge instead
    (crashed,) = _by_gid(fig, "crashed")
    assert [x for x, _ in crashed.get_offsets()] == [4]
    (best,) = _by_gid(fig, "best")
    assert list(best.get_ydata())[:-1] == [1.0, 1.0, 0.995, 0.995, 0.995, 0.99, 0.99]
    labels = [t.get_text() for t in _by_gid(fig, "label")]
    assert labels[0] == "baseline"
    assert labels[1] == "warm up the learning rate for 200 steps (−0.0050)"
    assert labels[2].startswith("SwiGLU activation in the MLP") and "…" in labels[2] and len(labels[2]) < 60
    title = fig.axes[0].get_title()
    assert "1.0000 → 0.9900" in title and "−1.00%" in title


@pytest.mark.parametrize(
    "exps",
    [
        [],
        [exp(1, KEEP, 1.0, "baseline", kind="baseline")],
        [exp(1, CRASH, None, "baseline", kind="baseline"), exp(2, CRASH, None, "again")],
        [exp(1, RUNNING, None, "baseline", kind="baseline", finished_at=None)],
        [exp(1, KEEP, 1.0, "baseline", kind="baseline"), exp(2, DISCARD, None, "no value recorded")],
        [exp(1, KEEP, 1.0, "baseline", kind="baseline"), exp(2, DISCARD, float("nan"), "diverged")],
        [exp(1, CRASH, None, "baseline", kind="baseline"), exp(2, KEEP, 1.0, "x" * 500), exp(3, KEEP, 0.9, "")],
    ],
    ids=["empty", "only-baseline", "all-crashes", "only-running", "discard-without-value", "nan", "no-baseline"],
)
def test_plot_and_report_edge_cases(tmp_path: Path, exps: list[Experiment]):
    plot_progress(exps, tmp_path / "progress.png")
    assert png_size(tmp_path / "progress.png")[0] > 0
    text = render_report(exps)
    assert text.startswith("# Research report")


# -- the report -------------------------------------------------------------------------------------


def test_report_contents():
    text = render_report(history())
    # baseline → best, absolute and relative
    assert "Baseline: **1.000000** (#1)" in text
    assert "Best: **0.990000** (#6" in text
    assert "**−0.010000** val_bpb (−1.00%) from 2 kept changes" in text
    # each kept change with its delta against the previous best, description and reason
    assert "| 3 | 0.995000 | −0.005000 (−0.50%) | warm up the learning rate for 200 steps | better by 3 sigma |" in text
    assert "| 6 | 0.990000 (mean of 2) | −0.005000 (−0.50%) | SwiGLU activation" in text
    assert "…" in text.split("| 6 |", 1)[1].split("\n", 1)[0]  # a very long description is cut
    assert "better \\| re-run twice" in text  # a pipe does not break the table
    # the crash, with the exception from its log since it gave no reason
    assert "**#4** double the batch size: `torch.OutOfMemoryError: CUDA out of memory`" in text
    assert "8 experiments in the ledger: 3 keep, 3 discard, 1 crash, 1 running." in text
    # throughput: 7 finished from T0 to T0 + 3600 + 500 s
    assert f"**{7 / (4100 / 3600):.1f} experiments per hour**" in text
    assert "Training: 30 min 00 s, **44% of wall clock**" in text  # #4 recorded no training time
    # tokens and cost per agent; codex's cost is unknown
    assert "| claude | claude-x | 6 | 6,000 | 600 | $1.50 |" in text
    assert "| codex | gpt-y | 2 | 12,000 | 1,600 | unknown |" in text
    assert "| **total** | | 8 | 18,000 | 2,200 | $1.50 (+ 2 unknown) |" in text
    # the diff of train.py, best vs baseline
    diff = text.split("```diff\n", 1)[1].split("\n```", 1)[0]
    lines = diff.splitlines()
    assert lines[:2] == ["--- train.py (baseline #1)", "+++ train.py (best #6)"]
    assert {"-WARMUP = 0", "+WARMUP = 200", "-ACT = 'relu'", "+ACT = 'swiglu'", " LR = 0.04"} <= set(lines)
    assert "2 lines added, 2 removed." in text


def test_report_only_baseline_and_all_crashes():
    text = render_report([exp(1, KEEP, 1.0, "baseline", kind="baseline")])
    assert "Baseline: **1.000000** (#1)" in text and "No change has beaten it yet." in text
    assert "The best is still the baseline" in text
    text = render_report([exp(1, CRASH, None, "baseline", kind="baseline", reason="no GPU\nmore")])
    assert "No kept experiment has a val_bpb yet" in text
    assert "**#1** baseline: `no GPU`" in text


def test_report_diff_fence_survives_backticks():
    source = BEST_SOURCE + 'DOC = """```python"""\n'
    text = render_report([exp(1, KEEP, 1.0, "baseline", kind="baseline"), exp(2, KEEP, 0.9, "doc", source=source)])
    assert "````diff\n" in text and text.rstrip().endswith("````")
