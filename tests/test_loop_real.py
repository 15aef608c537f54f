"""The loop against real training runs (a bigram train.py, 1-second budgets): crashes, hangs, cheats, kills."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch
from loop_support import BIGRAM_TRAIN_PY, ScriptedAgent, agent_channel, make_loop, make_workspace, with_constants

from autoresearch.device import cpu_name
from autoresearch.evaluator.cores import usable_cores
from autoresearch.loop.executor import LocalExecutor, RunSpec
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.settings import LoopError
from autoresearch.vocabulary import Kind, Status

# Runs the command after it with SIGINT at its default. A test run started in the background (`pytest &` in a
# script) has SIGINT ignored, and its children inherit that, as a background job's should.
START = "    run = harness.start()\n"
FOREGROUND = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autoresearch", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def edit(ctx_source: str, old: str, new: str) -> str:
    assert old in ctx_source
    return ctx_source.replace(old, new)


def marked(marker: str) -> list[psutil.Process]:
    """The processes with `marker` on their command line."""
    return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


def test_real_runs_are_judged_from_the_harness_result(lab):
    workspace, loop = lab  # its baseline: the lab's two runs (a loop of its own trained two more, ~12 s)
    baseline = loop.ledger.get(1)
    assert baseline.kind == "baseline" and baseline.status == Status.KEEP and len(baseline.run_values) == 2
    result_files = list((workspace.state / "runs").glob("1-*/result.json"))
    assert len(result_files) == 2 and not (workspace.root / "result.json").exists()
    # Not LR 0.3: the LLM agent's test below makes that edit, and a kept one here would leave it nothing to change.
    exp = loop.step(ScriptedAgent([lambda ctx: ("LR 0.1", with_constants(ctx.train_py, LR=0.1))]))
    assert exp.status in ("keep", "discard"), exp.reason + exp.log_tail
    # The evaluator's CPU clock reads each process's time in ticks of 10 ms (over the run's cores), the harness's in
    # its own finer reading: a run that trained its 1 s budget by the one can read a few ms short by the other (0.995).
    assert exp.val_bpb is not None and exp.training_seconds >= 0.98


def test_a_hang_is_killed_at_the_timeout_with_its_children_and_recorded_as_a_crash(lab, monkeypatch):
    workspace, loop = lab
    monkeypatch.setattr(loop, "timeout", 8.0)  # the hang's: the test waits for no more
    marker = f"autoresearch-hang-{os.getpid()}"
    # It ignores the polite signals, and so does its child, in a session of its own.
    hang = "    run = harness.start()\n    import signal, subprocess, time\n"
    hang += "    for sig in (signal.SIGTERM, signal.SIGINT):\n        signal.signal(sig, signal.SIG_IGN)\n"
    hang += "    child = 'trap \"\" TERM INT HUP; while :; do sleep 1; done'\n"
    hang += f"    subprocess.Popen(['sh', '-c', child, '{marker}'], start_new_session=True)\n    time.sleep(600)\n"
    started = time.monotonic()
    exp = loop.step(ScriptedAgent([lambda ctx: ("hang", edit(ctx.train_py, "    run = harness.start()\n", hang))]))
    assert exp.status == Status.CRASH and "hard timeout" in exp.reason
    assert time.monotonic() - started < 60
    time.sleep(0.5)
    assert not marked(marker)
    assert workspace.git.head() == loop.best().commit


def test_a_model_that_looks_ahead_is_never_kept(lab):
    _, loop = lab
    best = loop.best()
    peek = "        logits = self.table(idx.roll(-1, dims=1))  # predicts from the next token\n"
    cheat = lambda ctx: ("peek at the next token", edit(ctx.train_py, "        logits = self.table(idx)\n", peek))
    exp = loop.step(ScriptedAgent([cheat]))
    assert exp.status == Status.CRASH and "causality probe" in exp.reason
    assert loop.best().id == best.id


def test_a_train_py_that_forges_its_result_gets_no_kept_result(lab):
    _, loop = lab
    best = loop.best()
    forge = (
        "    import json, os\n"
        "    print('---\\nval_bpb:          0.100000')\n"
        "    json.dump({'val_bpb': 0.1, 'valid': True}, open(os.environ['AUTORESEARCH_RESULT'], 'w'))\n"
    )
    writes = lambda ctx: ("forge", edit(ctx.train_py, "    run.finish()\n", "    run.finish()\n" + forge))
    prints = lambda ctx: (
        "print a summary",
        edit(ctx.train_py, "    run.finish()\n", "    print('---\\nval_bpb:          0.100000')\n"),
    )
    forged = loop.step(ScriptedAgent([writes]))
    # Scored from what it handed over, not from its file; the run itself is honest (kept only if it won by luck).
    assert forged.val_bpb > 1 and json.loads(forged.result)["val_bpb"] > 1
    printed = loop.step(ScriptedAgent([prints]))  # a summary printed instead of handing the model over
    assert printed.status == Status.CRASH and printed.val_bpb is None and "before run.finish()" in printed.reason
    assert loop.best().id in (best.id, forged.id) and loop.best().val_bpb > 1  # never the forged 0.1


def test_a_train_py_killed_or_exiting_before_the_hand_over_is_told_how_it_ended(lab):
    """The out-of-memory killer's SIGKILL reaches train.py from outside; its own exit code is the other news. The
    stop's kill of what was left comes after either and must not be reported instead (it was, racing them)."""
    _, loop = lab
    ends = {
        "killed": "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "exits": "    import sys\n    sys.exit(7)\n",
    }
    reasons = {}
    for what, code in ends.items():
        agent = ScriptedAgent([lambda ctx, w=what, c=code: (w, edit(ctx.train_py, "    run.finish()\n", c))])
        exp = loop.step(agent)
        assert exp.status == Status.CRASH, exp.reason
        reasons[what] = exp.reason
    assert reasons["killed"].startswith("train.py was killed by SIGKILL (the out-of-memory killer"), reasons
    assert "before run.finish()" in reasons["killed"]
    assert reasons["exits"].startswith("train.py ended (exit code 7) before run.finish()"), reasons


def test_sigkill_of_the_loop_then_run_again_loses_and_duplicates_nothing(tmp_path, tiny_prepared):
    ws = make_workspace(tmp_path / "ws", tiny_prepared)  # a 1 s budget: a run's start and evaluation take longer
    args = ["run", "--agent", "tune", "--baseline-runs", "2", "--plain", "--max-experiments", "3"]
    loop = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", *args], cwd=ws.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until an experiment (not the baseline) is training
        ledger = Ledger(ws.root)
        running = ledger.running()
        ledger.close()
        if running and running.kind == "experiment" and list(ws.state.glob(f"runs/{running.id}-0/pid")):
            break
        time.sleep(0.2)
    else:
        loop.kill()
        raise AssertionError("no experiment started")
    loop.send_signal(signal.SIGKILL)
    loop.wait()
    killed_id = running.id

    done = cli("run", "--agent", "tune", "--baseline-runs", "2", "--plain", "--max-experiments", "1", cwd=ws.root)
    assert done.returncode == 0, done.stderr
    ledger = Ledger(ws.root)
    rows = ledger.all()
    assert [r.id for r in rows] == list(range(1, len(rows) + 1))
    assert all(r.status != Status.RUNNING for r in rows)
    assert rows[killed_id - 1].description == running.description and rows[killed_id - 1].val_bpb is not None
    assert len([r for r in rows if r.kind == "experiment"]) == killed_id  # the killed one, plus one more
    tsv = (ws.root / "results.tsv").read_text().splitlines()[1:]
    assert len(tsv) == len(rows)
    best = [r for r in rows if r.status == Status.KEEP][-1]
    assert ws.git.head() == best.commit and ws.read_train_py() == best.source
    for r in rows:
        if r.status != Status.KEEP and r.commit:
            assert ws.git("rev-parse", f"refs/autoresearch/discarded/{r.id}").strip() == r.commit
    assert not ws.git.changed_paths()
    assert not list(ws.state.glob("box-*"))  # the experiments' folders of the killed evaluators, and of the last


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["kill PID", "terminal closed"])
def test_kill_of_the_loop_stops_it_as_ctrl_c_does_and_writes_the_report(tmp_path, tiny_prepared, signum):
    """`kill PID`, and a hang-up (SIGHUP: the terminal closed, an SSH connection dropped), which ended the loop at once
    with its report stale and its runs' leftovers in place (helper 149's walk)."""
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    args = ["run", "--baseline-runs", "2", "--plain"]
    loop = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", *args], cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL),  # not as `nohup` left it to pytest
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (ws.state / "runs" / "1-1" / "pid").exists():  # its second run
        time.sleep(0.2)
    loop.send_signal(signum)
    try:
        _, err = loop.communicate(timeout=60)
    finally:  # not left running beside the rest of the suite (a SIGHUP it ignored: 250 s more for the suite in CI)
        if loop.poll() is None:
            loop.kill()
    assert loop.returncode == 128 + signum and "interrupted" in err and "Traceback" not in err  # a pipe: said there
    report = (ws.root / "report.md").read_text()  # written on the way out, when no loop runs the baseline any more
    assert "1 experiment in the ledger: 1 interrupted" in report and "interrupted: trained again" in report
    assert "| 1 | interrupted |" in report  # the table says so too (BROKE, fixed: it said running)
    assert not list(ws.state.glob("box-*"))  # its evaluators' boxes removed, as after Ctrl-C


def test_try_runs_the_baseline_first_then_judges_the_edit(tmp_path, tiny_prepared):
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    ws.write_train_py(BIGRAM_TRAIN_PY.replace("LR = 0.05", "LR = 0.5"))
    first = cli("try", "-m", "raise LR to 0.5", "--baseline-runs", "2", cwd=ws.root)
    assert first.returncode == 0, first.stderr
    verdict = first.stdout.strip().splitlines()[-1]
    assert verdict.startswith("exp 2 ") and "raise LR to 0.5" in verdict
    assert ("KEEP" in verdict) == ("LR = 0.5" in ws.read_train_py())
    (ws.root / "autoresearch.json").write_text((ws.root / "autoresearch.json").read_text().replace("1.0", "2.0"))
    refused = cli("try", "-m", "longer budget", cwd=ws.root)
    assert refused.returncode == 2 and "autoresearch.json" in refused.stderr


def test_status_and_report_describe_the_run(lab):
    ws, loop = lab
    loop.step(ScriptedAgent([lambda ctx: ("LR 0.2", with_constants(ctx.train_py, LR=0.2))]))
    status = cli("status", cwd=ws.root)
    assert status.returncode == 0 and "best: exp" in status.stdout and "noise" in status.stdout
    report = cli("report", cwd=ws.root)
    assert report.returncode == 0, report.stderr
    assert (ws.root / "progress.png").stat().st_size > 1000 and "baseline" in (ws.root / "report.md").read_text()


def test_an_llm_agent_drives_the_loop_over_the_real_api_protocol(lab, fake_openai):
    from autoresearch.agents.openai_agent import OpenAIAgent

    workspace, loop = lab
    # The LR line of whichever train.py the lab's tests have kept so far (another of them may have changed LR).
    (lr_line,) = [line for line in workspace.read_train_py().splitlines() if line.startswith("LR = ")]
    assert not lr_line.startswith("LR = 0.3 ")
    fake_openai.reply("ok")  # the agent's preflight, before any training of this start
    fake_openai.reply(
        "Hypothesis: a higher learning rate learns more in one second\n\ntrain.py\n<<<<<<< SEARCH\n"
        f"{lr_line}\n=======\nLR = 0.3  # Adam learning rate (0.001-1)\n"
        ">>>>>>> REPLACE\n"
    )
    loop.run(OpenAIAgent("gpt-5-mini"), max_experiments=1)
    exp = loop.ledger.all()[-1]
    assert exp.kind == "experiment" and exp.agent == "openai" and exp.model == "gpt-5-mini"
    assert exp.description == "a higher learning rate learns more in one second"
    assert exp.status in ("keep", "discard"), exp.reason
    assert "LR = 0.3" in exp.source and exp.input_tokens == 1200 and exp.cost_usd > 0
    prompt = json.dumps(fake_openai.requests[-1].body)
    assert "Research program" in prompt and "class Bigram" in prompt  # program.md and train.py


def test_a_command_agent_script_drives_the_loop_only_train_py_may_change_and_its_turns_get_cores_of_their_own(
    tmp_path, tiny_prepared
):
    """`run` with a shell agent: the script's edit to train.py is an experiment, one to program.md a crash. And it
    sets cores aside for its turns (by default where runs train on GPUs; here asked for, on the CPU): the baseline's
    runs train on the other cores, one worker's too, and the turn runs on its own. (One loop for both: two tests
    had each train a baseline, ~17 s.)"""
    cores = sorted(os.sched_getaffinity(0))
    apart = len(cores) >= 2  # a core for the turns needs another for the runs
    show = "    run = harness.start()\n    print('cores:', *sorted(os.sched_getaffinity(0)), flush=True)\n"
    ws = make_workspace(tmp_path / "ws", tiny_prepared, "import os\n" + edit(BIGRAM_TRAIN_PY, START, show))
    said, second = agent_channel(ws) / "cores", agent_channel(ws) / "second"  # what it writes in /tmp is its turn's
    script = tmp_path / "agent.sh"
    script.write_text(
        "#!/bin/sh\n"
        'grep -q "Research program" "$AUTORESEARCH_PROMPT_FILE" || exit 3\n'
        f"if [ -f {second} ]; then\n"
        "  sed -i 's/^LR = 0.05 /LR = 0.06 /' train.py; echo 'budget: 99' >> program.md; echo 'longer budget'\n"
        "  exit 0\nfi\n"
        f"touch {second}\n"
        f"grep Cpus_allowed_list /proc/self/status | cut -f2 > {said}\n"
        "sed -i 's/^BATCH = 8 /BATCH = 16 /' train.py\n"
        "echo 'thinking out loud'\necho 'larger batches'\n"
    )
    args = ["run", "--agent", "command", "--command", f"sh {script}", "--baseline-runs", "2", "--plain"]
    env = {**os.environ, **({"AUTORESEARCH_AGENT_CORES": "1"} if apart else {})}
    done = cli(*args, "--max-experiments", "2", cwd=ws.root, env=env)
    assert done.returncode == 0, done.stderr
    rows = Ledger(ws.root).all()
    assert rows[1].description == "larger batches" and "BATCH = 16" in rows[1].source
    assert rows[2].status == Status.CRASH and "program.md" in rows[2].reason
    assert "budget: 99" not in (ws.root / "program.md").read_text()
    runs = sorted((ws.state / "runs").glob("*/log.txt"))
    assert len(runs) == 3, [r.read_text() for r in runs]  # the baseline's two and the edit's: program.md's none
    if apart:
        assert f"the agent's turns run on CPUs {cores[-1]}, the runs on the others" in done.stdout + done.stderr
        assert said.read_text().strip() == str(cores[-1])
        assert all(f"cores: {cores[0]}\n" in run.read_text() for run in runs), [r.read_text() for r in runs]


def test_ctrl_c_stops_try_within_10_s_even_in_a_long_step_that_ignores_signals(tmp_path, tiny_prepared):
    # The 1 s budget of the other tests: the edit's run sticks in the step that starts its clock (the tiny preset's
    # third, the last untimed one), whatever its budget; only the baseline's two runs train it out.
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    marker = f"autoresearch-long-step-{os.getpid()}"
    stuck = (
        "        run.step_done(loss)\n"
        "        if run.step == 3:  # a step that never ends, deaf to SIGINT and SIGTERM, with a child of its own\n"
        "            import signal, subprocess, time\n"
        "            signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "            signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"            subprocess.Popen(['sh', '-c', 'sleep 600; :', '{marker}'])\n"
        "            time.sleep(600)\n"
    )
    # (Its child was `sleep 600 MARKER` once, which sleep refused at once: the check that it is killed held for none.)
    ws.write_train_py(edit(BIGRAM_TRAIN_PY, "        run.step_done(loss)\n", stuck))
    # A terminal's Ctrl-C: SIGINT to the foreground process group, which is the command's own here; started as a
    # shell starts a command in the foreground, with SIGINT at its default (FOREGROUND).
    command = [sys.executable, "-m", "autoresearch", "try", "-m", "a long step", "--baseline-runs", "2"]
    loop = subprocess.Popen(
        [sys.executable, "-c", FOREGROUND, *command],
        cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT then prints every thread's stack
    )  # fmt: skip
    progress = ws.state / "runs" / "2-0" / "progress.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and loop.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(progress.read_text())["phase"] == "training":
                break
        time.sleep(0.2)
    else:
        loop.kill()
        raise AssertionError(f"the edit never trained: {loop.communicate()}")
    while not marked(marker):  # in the long step once its child runs (a fixed 1.5 s before)
        assert time.monotonic() < deadline and loop.poll() is None, "the edit never reached its long step"
        time.sleep(0.1)
    os.killpg(loop.pid, signal.SIGINT)
    interrupted = time.monotonic()
    try:
        _, err = loop.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        left = [(p.pid, p.status()) for p in psutil.Process(loop.pid).children(recursive=True)]
        os.kill(loop.pid, signal.SIGABRT)
        _, err = loop.communicate(timeout=30)
        raise AssertionError(f"30 s after Ctrl-C it still ran, its processes {left}; stderr:\n{err}") from None
    assert time.monotonic() - interrupted < 10
    assert loop.returncode == 130 and "interrupted" in err and "Traceback" not in err
    time.sleep(0.5)
    assert not marked(marker)
    ledger = Ledger(ws.root)
    rows = ledger.all()
    ledger.close()
    assert rows[0].status == Status.KEEP and rows[0].val_bpb is not None  # the baseline's result is kept
    assert len(rows) == 1 or rows[1].status == Status.RUNNING  # the interrupted edit is run again on the next start


def test_on_the_cpu_a_busy_machine_trains_as_many_steps_as_an_idle_one(workspace):
    # On a CPU the budget is the run's own CPU time: other processes slow it down in wall time only.
    loop = make_loop(workspace, LocalExecutor(prewarm=False), baseline_runs=2)
    spec = RunSpec(workspace.root, workspace.state / "runs" / "idle", 120, loop.fingerprint)
    idle = loop.executor.run(spec)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        busy = loop.executor.run(replace(spec, run_dir=workspace.state / "runs" / "busy"))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert idle.status == busy.status == "ok", (idle.reason, busy.reason)
    assert idle.result.training_clock == busy.result.training_clock == f"CPU time / {torch.get_num_threads()} cores"
    wall = [o.result.total_seconds - o.result.untimed_seconds - o.result.eval_seconds for o in (idle, busy)]
    # The hogs took the cores half the time: a wall clock would have counted that. (Against the budget, not the
    # idle run's wall time: the suite's other worker may load the machine during the idle run as well.)
    assert wall[1] > 1.4 * busy.result.budget_seconds
    # A 1 s budget is ~30 steps: how threads share the cores under load moves it by a few (42 against 30 seen).
    assert 0.7 < busy.result.num_steps / idle.result.num_steps < 1.6


def test_a_run_on_fewer_cores_than_the_baseline_had_is_not_compared_with_it(workspace):
    """Resumed with another --workers count or CPU limit, a run's budget second is another amount of work."""
    assert usable_cores() >= 2, "the test needs two cores, as CI has"
    loop = make_loop(workspace, LocalExecutor(env={"OMP_NUM_THREADS": "2"}), baseline_runs=2)  # a noise measured
    baseline = loop.baseline()
    assert json.loads(baseline.result)["setup"] == f"{cpu_name()}; CPU time / 2 cores"
    fewer = make_loop(workspace, LocalExecutor(env={"OMP_NUM_THREADS": "1"}))
    moved = r"measured on .*; CPU time / 1 cores, the baseline's runs on .*; CPU time / 2 cores"
    with pytest.raises(LoopError, match=moved):
        fewer.step(ScriptedAgent([lambda ctx: ("LR 0.3", with_constants(ctx.train_py, LR=0.3))]))
    assert not Ledger(workspace.root).get(2).status.final  # no verdict: it waits for a run on two cores


def test_when_the_fork_server_dies_runs_start_as_new_processes_and_the_loop_says_so(workspace):
    events: list[str] = []
    executor = LocalExecutor(prewarm=False)
    loop = make_loop(workspace, executor, baseline_runs=1, events=events)
    executor._server._proc.kill()  # the fork server is gone before the first run
    exp = loop.baseline()
    assert exp.status == Status.KEEP and exp.val_bpb is not None
    assert "exited" in executor.fork_failure
    assert [e for e in events if "the fork server failed" in e and "new processes" in e]


def test_two_workers_on_fake_gpus_killed_with_two_runs_in_flight_resume_without_loss_or_duplicate(
    tmp_path, tiny_prepared, monkeypatch
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the GPUs the loop is shown (this machine has none)
    shows_gpu = "    run = harness.start()\n    import os\n"
    shows_gpu += "    print('CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'])\n"
    source = edit(BIGRAM_TRAIN_PY, "    run = harness.start()\n", shows_gpu)
    ws = make_workspace(tmp_path / "ws", tiny_prepared, train_py=source)  # 1 s budgets: the runs' start-ups overlap too
    args = ["run", "--agent", "tune", "--baseline-runs", "2", "--plain", "--gpus", "0,1"]
    loop = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", *args, "--max-experiments", "4"],
        cwd=ws.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until two experiments (not the baseline) train at once
        ledger = Ledger(ws.root)
        training = [e for e in ledger.in_flight() if e.kind == "experiment" and e.attempts]
        ledger.close()
        if len(training) == 2 and all(list(ws.state.glob(f"runs/{e.id}-0/pid")) for e in training):
            break
        time.sleep(0.2)
    else:
        loop.kill()
        raise AssertionError("two experiments never trained at once")
    loop.send_signal(signal.SIGKILL)
    loop.wait()
    assert {e.worker for e in training} == {"gpu 0", "gpu 1"}

    done = cli(*args, "--max-experiments", "0", cwd=ws.root)
    assert done.returncode == 0, done.stderr
    rows = Ledger(ws.root).all()
    assert [r.id for r in rows] == list(range(1, len(rows) + 1)) and all(r.status.final for r in rows)
    for e in training:  # each taken up again and judged once, from its own commit
        again = rows[e.id - 1]
        assert again.commit == e.commit and again.description == e.description and again.val_bpb is not None
    best = [r for r in rows if r.status == Status.KEEP][-1]
    assert ws.git.head() == best.commit and ws.read_train_py() == best.source and not ws.git.changed_paths()
    logs = [p.read_text() for p in ws.state.glob("runs/*/log.txt")]
    seen = {line for log in logs for line in log.splitlines() if line.startswith("CUDA_VISIBLE_DEVICES=")}
    assert seen == {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}  # each run saw its own GPU alone
    assert {json.loads(r.result)["device"].split()[0] for r in rows if r.result != "{}"} == {"CPU"}  # no CUDA


# A train.py that trains a fixed number of steps, well inside its budget, from an initialisation of its own.
FIXED_STEPS = """    run = harness.start()
    torch.manual_seed(1234)  # not SEED: every run is this one
    model = Bigram(run.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    run.set_model(model)
    batches = run.train_batches(BATCH)
    timed = 0
    while timed < 40 and not run.time_up:  # the clock decides nothing
        x, y = next(batches)
        loss = model(x, y)
        if run.step >= run.untimed_steps:  # the untimed steps' random tokens are not learnt from
            loss.backward()
            optimizer.step()
            timed += 1
        optimizer.zero_grad()
        run.step_done(loss)
    run.finish()
"""


@pytest.mark.slow
def test_on_the_cpu_clock_a_train_py_that_ignores_seed_and_the_clock_repeats_itself_and_is_told_for_copies(
    tmp_path, tiny_prepared
) -> None:
    """Red team (helper 117): the CPU clock's jitter moves how many steps fit, and so the loss, but not for a train.py
    that trains a fixed number of steps: its runs at SEED 42 and 43 score the same, to the bit. The judge takes such
    runs for copies of one run on the CPU clock too (judge.copy_spread), where honest seeds never agree that closely."""
    from autoresearch.data.shards import Manifest
    from autoresearch.evaluator.fingerprint import fingerprint
    from autoresearch.loop.experiment import Experiment
    from autoresearch.loop.judge import copies, copy_spread
    from autoresearch.loop.recovery import seeded

    head, _, _ = BIGRAM_TRAIN_PY.partition("    run = harness.start()\n")
    source = head + FIXED_STEPS
    ws = make_workspace(tmp_path / "ws", tiny_prepared, train_py=source, budget=3.0)
    digest = fingerprint(ws.apparatus, Manifest.load(Path(ws.apparatus.data_dir) / "manifest.json"))
    executor = LocalExecutor(prewarm=False)
    try:
        outcomes = [
            executor.run(
                RunSpec(ws.root, ws.state / "runs" / f"2-{run}", 120, digest, code=seeded(source, run).encode())
            )
            for run in (0, 1)
        ]
    finally:
        executor.close()
    values = [o.val_bpb for o in outcomes]
    assert all(o.result and o.result.confined and "CPU time" in o.result.training_clock for o in outcomes), outcomes
    assert values[0] is not None and values[0] == values[1]
    clock = json.dumps({"training_clock": outcomes[0].result.training_clock})
    baseline = Experiment(1, Kind.BASELINE, Status.KEEP, "baseline", "", result=clock)  # seeds 0.05 apart, say
    assert copies(values, copy_spread(0.05, baseline))
