"""What train.py imports: the data, the clock and the hand-over of the model to the evaluator.

from autoresearch import harness
run = harness.start()
"""

from autoresearch.harness.run import Run, TrainingFailed, start

__all__ = ["Run", "TrainingFailed", "start"]
