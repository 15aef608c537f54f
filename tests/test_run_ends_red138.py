"""Red team (helper 138) of the loop's ends: `run` when every ask failed (`Asking.none_proposed`), and an API agent's
prompt too long for the model (agents/llm.py); each test failed before its fix.

- A run that resumed an experiment a killed loop left in flight, trained and judged it, then found the agent failing
  every ask, ended with "none of the 1 asks ... gave a proposal: nothing was tried" and exit 2: a night's work (here
  a keep) taken for none, and a script's `run ... && report` skipped its report.
- SGLang's and LM Studio's 400 for a prompt over the model's context, and Anthropic's for one that leaves the answer
  no room, failed as any 400: asked again all night.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr
from test_loop import score

from autoresearch.agents.base import ProposalError
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Status
from autoresearch.workspace.disk import DiskFullError


def unreachable(ctx):
    raise ProposalError("could not reach OpenAI API at http://127.0.0.1:9/v1/")


@pytest.mark.slow  # a second: two loops on the fake executor
def test_a_run_that_resumed_and_judged_an_experiment_is_no_night_without_work(workspace) -> None:
    from autoresearch.cli.commands import drive
    from autoresearch.loop.workers import devices

    class FillsUp(FakeExecutor):  # the first loop dies with exp 2 in flight, as a killed one does
        def run(self, spec):
            if constant(workspace.read_train_py(), "LR") == 0.2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().run(spec)

    first = make_loop(workspace, FillsUp(score))
    first.baseline()
    with pytest.raises(DiskFullError):
        first.step(ScriptedAgent([set_lr(0.2)]))
    assert Ledger(workspace.root).get(2).status == Status.RUNNING
    args = argparse.Namespace(
        ray=None, gpus=None, workers=None, timeout=None, accelerator=None, max_experiments=1, hours=None, linger=0.0
    )
    drive(make_loop(workspace, FakeExecutor(score)), ScriptedAgent([unreachable]), devices(None, None), args)
    rows = Ledger(workspace.root).all()
    assert rows[1].id == 2 and rows[1].status == Status.KEEP and rows[-1].status == Status.CRASH


# -- an API agent's prompt too long, in the words of other servers ----------------------------------------------------


def test_sglangs_lm_studios_and_anthropics_other_prompt_too_long_stop_as_vllms_does(
    fake_openai, fake_anthropic, tmp_path: Path
) -> None:
    """What was seen: SGLang's 400 ("is longer than the model's context length", Together's words too) and LM Studio's
    (its message alone in "error"), and Anthropic's for a prompt that leaves the answer's 16,000 tokens no room, failed
    as any 400, and the loop asked again all night, 15 min apart."""
    from fake_llm import Scripted
    from test_agent_failures_stop76 import at_rest

    from autoresearch.agents.anthropic_agent import AnthropicAgent
    from autoresearch.agents.openai_agent import OpenAIAgent

    agent = OpenAIAgent("qwen3-coder")
    sglang = {"object": "error", "message": "The input (40000 tokens) is longer than the model's context length "
              "(32768 tokens).", "type": "BadRequestError", "param": None, "code": 400}  # fmt: skip
    lm_studio = {"error": "The number of tokens to keep from the initial prompt is greater than the context length. "
                 "Try to load the model with a larger context length, or provide a shorter input"}  # fmt: skip
    for body in (sglang, lm_studio):
        fake_openai.queue.append(Scripted(400, body))
        with pytest.raises(ProposalError, match="longer than the model's context") as failed:
            agent.propose(at_rest(tmp_path))
        assert failed.value.fatal and "shorten program.md" in failed.value.hint
        assert (body["message"] if "message" in body else body["error"]) in str(failed.value)  # LM Studio's were not
    fake_openai.queue.append(Scripted(400, {"error": "Invalid value for 'temperature'"}))
    with pytest.raises(ProposalError) as failed:
        agent.propose(at_rest(tmp_path))
    assert not failed.value.fatal and "rejected the request (HTTP 400)" in str(failed.value)
    fake_anthropic.error(400, "input length and `max_tokens` exceed context limit: 188240 + 16000 > 200000, decrease "
                         "input length or `max_tokens` and try again")  # fmt: skip
    with pytest.raises(ProposalError, match="longer than the model's context") as failed:
        AnthropicAgent("claude-sonnet-4-6").propose(at_rest(tmp_path))
    assert failed.value.fatal


def test_text_generation_inferences_422_for_a_prompt_too_long_stops_as_vllms_400_does(fake_openai, tmp_path) -> None:
    """BROKE, fixed: text-generation-inference answers a prompt over the model's context with 422 (its validation
    error), which failed as any other status, and the loop asked again all night. Its other 422s still do."""
    from fake_llm import Scripted
    from test_agent_failures_stop76 import at_rest

    from autoresearch.agents.openai_agent import OpenAIAgent

    agent = OpenAIAgent("tgi")
    for said in (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8192. Given: 8100 `inputs` tokens and "
        "16000 `max_new_tokens`",
        "Input validation error: `inputs` must have less than 4096 tokens. Given: 4545",
    ):
        fake_openai.queue.append(Scripted(422, {"error": said, "error_type": "validation"}))
        with pytest.raises(ProposalError, match=r"longer than the model's context \(HTTP 422\)") as failed:
            agent.propose(at_rest(tmp_path))
        assert failed.value.fatal and "--max-total-tokens" in failed.value.hint and said in str(failed.value)
    fake_openai.queue.append(
        Scripted(422, {"error": "Input validation error: `temperature` must be strictly positive", "error_type": "v"})
    )
    with pytest.raises(ProposalError) as failed:
        agent.propose(at_rest(tmp_path))
    assert not failed.value.fatal and "rejected the request (HTTP 422)" in str(failed.value)
