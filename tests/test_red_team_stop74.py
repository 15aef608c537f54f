"""Red team of stop 74's changes (visible text, status's progress, `wait` beside a `run`, Ray's address check, the
rates and noise as of a verdict, setup_differs' hint and `_interrupted`'s)."""

from __future__ import annotations

import argparse
import io

import pytest
from loop_support import FakeExecutor, make_loop, with_constants
from rich.console import Console
from test_scheduler import Device, score

from autoresearch.cli import _interrupted
from autoresearch.loop.activity import spans_of
from autoresearch.loop.engine import LoopError
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.workers import devices, make_workers
from autoresearch.vocabulary import Kind


def test_setup_differs_names_the_workers_the_baseline_was_measured_with_not_those_its_seeds_landed_on(workspace):
    """With `--workers 8` the baseline's seeds train on some of the workers (one on each of half of them): the hint
    must say `--workers 8`, the count whose cores per run the baseline's setup records, not the count of workers its
    seeds happened to run on."""
    from autoresearch.loop.trying import try_working_tree

    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    fakes = {}

    def executor_for(device):
        fakes[device.label] = Device(device.env)
        return fakes[device.label]

    sched = Scheduler(loop, make_workers(loop, devices(None, 8, cores=16), executor_for), None, confirm_runs=0)
    for fake in fakes.values():
        fake.fake.setup = "AMD EPYC; CPU time / 1 cores"
    sched.run(None)
    baseline = [e for e in Ledger(workspace.root).all() if e.kind == Kind.BASELINE]
    ran_on = {s.worker for e in baseline for s in spans_of(e)}
    assert 1 < len(ran_on) < 8, ran_on  # the premise: 4 workers, the seeds on fewer of them
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.2))
    with pytest.raises(LoopError) as refused:
        try_working_tree(make_loop(workspace, FakeExecutor(score, setup="AMD EPYC; CPU time / 2 cores")), "LR 0.2")
    assert "--workers 8" in str(refused.value), str(refused.value)


def test_interrupted_queue_loop_on_ray_names_the_accelerator_it_ran_with():
    """`run --agent queue --ray HEAD:6379 --accelerator H100` stopped: the hint to resume must keep `--accelerator
    H100` (the background loop `submit` starts is given it too), or the resumed loop's runs land on any GPU of a mixed
    cluster and are refused as measured on another setup than the baseline's."""
    out = io.StringIO()
    console = Console(file=out, width=300)
    args = argparse.Namespace(command="run", agent="queue", gpus=None, workers=None, ray="head:6379",
                              accelerator="H100", timeout=None)  # fmt: skip
    assert _interrupted(console, KeyboardInterrupt(), args) == 130
    said = out.getvalue()
    assert "autoresearch submit --accelerator H100 --ray head:6379`" in said, said


def test_the_live_views_table_spells_out_a_rebuilt_descriptions_escape_sequences(workspace):
    """`rebuild-ledger` takes each description from results.tsv as it stands; `status`, `show`, the verdict lines and
    report.md now spell its control characters out (visible), but the live view's cells (the best's line and the
    recent verdicts, shown on a resume) print them raw: ESC ] 52 sets the user's clipboard, ESC [ 2K erases a line."""
    from autoresearch.loop.live import LiveReporter
    from autoresearch.loop.rebuild import rebuild

    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    loop.ledger.close()
    tsv = workspace.root / "results.tsv"
    lines = tsv.read_text().splitlines()
    fields = lines[-1].split("\t")
    fields[-1] = "baseline \x1b]52;c;cHduZWQ=\x1b\\ \x1b[2K"
    tsv.write_text("\n".join([*lines[:-1], "\t".join(fields)]) + "\n")
    (workspace.state / "ledger.sqlite").unlink()
    rebuild(workspace.root, workspace.git)
    rows = Ledger(workspace.root).all()
    assert "\x1b" in rows[0].description  # the premise: the rebuilt row holds it
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    view = LiveReporter(console, "autoresearch")
    view.resume(rows)
    console.print(view._render())
    shown = out.getvalue()
    assert "\x1b]52" not in shown and "\x1b[2K" not in shown, repr(shown)


def test_show_diff_and_the_report_keep_chinese_and_emoji_in_train_py_as_they_are(workspace, capsys):
    """visible() spells out every character str.isprintable() refuses: besides controls and bidi overrides, that is
    the ideographic space U+3000 of Chinese and Japanese text, the no-break space, and the zero-width joiner that makes
    one emoji of 👩‍💻. A comment in train.py then reads `调参\\u3000学习率 👩\\u200d💻` in `show`, `diff`
    and report.md."""
    from loop_support import ScriptedAgent

    from autoresearch.cli import main
    from autoresearch.report import read_experiments, render_report

    comment = "# 调参\u3000学习率 👩\u200d💻 (LR\u00a00.2)"
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    loop.step(ScriptedAgent([lambda ctx: ("LR 0.2", with_constants(ctx.train_py, LR=0.2) + f"\n{comment}\n")]))
    loop.ledger.close()
    capsys.readouterr()
    assert main(["show", "2", "--workspace", str(workspace.root)]) == 0
    assert comment in capsys.readouterr().out
    assert main(["diff", "1", "2", "--workspace", str(workspace.root)]) == 0
    assert comment in capsys.readouterr().out
    assert comment in render_report(read_experiments(workspace.root), stopped=True)


@pytest.mark.slow  # up to 45 s: the hang it checks for
def test_a_loopback_address_where_something_answers_only_on_loopback_is_refused_not_waited_on_for_minutes():
    """`unanswered` connects to the address as written; Ray connects to 127.0.0.1 / localhost / ::1 at this node's own
    IP (services.resolve_ip_for_localhost). Where only loopback answers (a local port forward to a head, any other
    service there), the check passes and ray.init retries at the node's IP for minutes, saying nothing of its own:
    the very hang the check was added for."""
    import subprocess
    import sys
    import textwrap

    body = textwrap.dedent(
        """
        import socket, threading
        from autoresearch.errors import AutoresearchError
        from autoresearch.loop.ray_cluster import connect
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
        threading.Thread(target=lambda: [s.accept() for _ in iter(int, 1)], daemon=True).start()
        try:
            connect(f"127.0.0.1:{s.getsockname()[1]}")
        except AutoresearchError as exc:
            print("refused:", exc)
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    try:
        done = subprocess.run([sys.executable, "-c", body], env=env, capture_output=True, text=True, timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail("connect() to a loopback-only listener was still waiting after 45 s")
    assert "refused:" in done.stdout, done.stdout + done.stderr


def test_an_error_naming_a_path_prints_the_path_as_it_is_not_with_rich_emoji_codes_replaced(tmp_path, capsys):
    """The messages that name a path print it as it is (markup off, or escaped), but rich still replaced emoji codes:
    a workspace under `/data/night:ok:1` read `/data/night🆗1` in an error (and in `wrote ...`, `report: ...`)."""
    from autoresearch.cli import main

    where = tmp_path / "night:ok:1"
    where.mkdir()
    assert main(["status", "--workspace", str(where)]) == 2
    assert f"{where} is not a research workspace" in " ".join(capsys.readouterr().err.split())


def test_a_verdict_within_the_second_of_the_baselines_end_is_still_explained_with_its_noise(workspace):
    """A ledger rebuilt from git has its times to the second. Where the baseline's last seed ended within the second of
    the next experiment's commit, the two verdicts had one time, and the baseline fell out of the noise the
    experiment was explained with: `show 2` said "rebuilt from results.tsv and git" in place of its margin."""
    from dataclasses import replace

    from loop_support import ScriptedAgent

    from autoresearch.loop.judge import measured_noise
    from autoresearch.report.summary import noise_before

    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    loop.step(ScriptedAgent([lambda ctx: ("LR 0.2", with_constants(ctx.train_py, LR=0.2))]))
    baseline, change = loop.ledger.all()
    tied = [baseline, replace(change, finished_at=baseline.finished_at)]
    assert noise_before(tied, tied[1]) == measured_noise([baseline]) is not None
    assert noise_before(tied, tied[0]) is None  # the baseline's own verdict: no noise before it
