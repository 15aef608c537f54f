"""Loading and compiling the handed-over graph while the experiment trains.

The graph comes before the clock starts, and Inductor compiles it with its weights as inputs
(program.ShapeCompiled), so it can be compiled against zeros long before the trained weights come. Done in
a thread of the evaluator while the experiment trains, that takes loading and compiling the graph (~5.5 s on
an H200 with a warm cache) off the time between the end of training and the score. It starts with the clock:
started when the graph came, it competed with serving the untimed steps' batches, which then took 2.5 s
longer (BENCHMARKS.md).

Only where the graph is compiled (CUDA), and only where the experiment is confined: unconfined, stopping it
kills every child of the evaluator, the compiler's worker pool among them. Whatever goes wrong here, the
evaluation loads the graph again after training, as it would have anyway, and meets the same error there,
if it is the graph's.
"""

from __future__ import annotations

import threading

import torch

from autoresearch import switches
from autoresearch.device import autocast
from autoresearch.evaluator.program import Program, ShapeCompiled

SWITCH_ENV = switches.COMPILE_AHEAD
WAIT_S = 120.0  # how long the evaluation waits for an unfinished compile before it loads the graph itself


def wanted(device: torch.device) -> bool:
    return device.type == "cuda" and not switches.switched(SWITCH_ENV)


class CompileAhead(threading.Thread):
    """The graph `document`, built with zeros for weights and compiled for batches of `rows` x `seq_len`."""

    def __init__(self, document: bytes, device: torch.device, rows: int, seq_len: int):
        super().__init__(name="compile-ahead", daemon=True)
        self._document, self._device, self._shape = document, device, (rows, seq_len)
        self._model: ShapeCompiled | None = None

    def run(self) -> None:
        try:
            model = ShapeCompiled(Program(self._document, self._device))
            with autocast(self._device):  # where the evaluation calls it: the graph's dtypes depend on it
                model.prepare(*self._shape)
            self._model = model
        except BaseException:  # the evaluation loads the graph again and reports what fails there
            self._model = None

    def take(self, weights: bytes, wait: float = WAIT_S) -> ShapeCompiled | None:
        """The compiled graph with the trained `weights` bound (ProgramRejected if they do not fit), or None
        if it could not be made in time."""
        self.join(wait)
        if self.is_alive() or self._model is None:
            return None
        self._model.program.bind(weights)
        return self._model
