"""The two callables that operators take from their caller: the model and a progress report."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

# Called as ``progress(done, total)`` with units of work (windows, tiles) done so far.
Progress = Callable[[int, int], None]


class Predictor(Protocol):
    """A model, as the operators see it (each operator states its own shapes and dtypes).

    Contract:
        * It is called with one batch: a C-contiguous array ``(B, C, *spatial)``; the last
          batch of a run may be smaller than the others.
        * It returns ``(B, C_out, *spatial)``: the same ``B`` and spatial shape, any number of
          channels ``C_out`` (the same for every call), anything ``np.asarray`` turns into real
          numbers. The input array is not reused, so the predictor may keep or modify it.
        * It may be a remote model (Triton) or a plain function; it is called from the
          caller's thread, one batch at a time, in order. Its exceptions propagate.
        * Optionally it also has ``predict_many(batches)``: given an iterator of such batches,
          it yields their predictions in the same order, and may consume a few batches ahead
          (requests in flight). Operators use it where present; a plain function needs only
          ``__call__``.
    """

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...
