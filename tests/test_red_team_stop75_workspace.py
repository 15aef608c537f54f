"""Red team (helper 133) of stop 75's workspace changes: the hint for hand commits on the best (the torch hint's test
is in test_untidy_user.py, beside the refusal's)."""

from __future__ import annotations

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr

from autoresearch.errors import AutoresearchError


def _executor() -> FakeExecutor:
    return FakeExecutor(lambda source: 3.0 + constant(source, "LR"))


def test_a_hand_commit_that_moves_train_py_into_prompts_is_not_called_a_prompts_commit(workspace) -> None:
    """_moved_by_hand lists what the commits on the best changed with `git diff --name-only`, which detects renames
    (diff.renames defaults to true): a commit that moves train.py to prompts/<name>.md (keeping the old version as
    notes for the agent) is listed as `prompts/<name>.md` alone, so the hint says "someone committed prompts/...;
    `git reset --soft BEST` ... keeps the files as you wrote them". Following it leaves train.py deleted (staged)
    and missing from the working tree. Expected: train.py named (`--no-renames`), and the hint that saves the
    commit first (`git branch mine`)."""
    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()
    (workspace.root / "prompts").mkdir(exist_ok=True)
    workspace.git("mv", "train.py", "prompts/old_train.md")
    workspace.git("-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "keep the old train.py as notes")
    with pytest.raises(AutoresearchError) as refused:
        make_loop(workspace, _executor()).run(ScriptedAgent([set_lr(0.01)]), 1)
    hint = refused.value.hint or ""
    assert "reset --soft" not in hint, hint
    assert "git branch mine" in hint, hint
