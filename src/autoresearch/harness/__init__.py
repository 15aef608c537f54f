"""The fixed apparatus: data, tokenizer, loader, time budget, evaluation. train.py imports only this.

from autoresearch import harness
run = harness.start()
"""

from autoresearch.harness.run import Run, TrainingFailed, start

__all__ = ["Run", "TrainingFailed", "start"]
