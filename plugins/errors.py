"""The exception types the command turns into a one-sentence message instead of a traceback."""

from __future__ import annotations

import math
from typing import Any


class UserInputError(Exception):
    """Bad input from the user: a missing path, wrong channel count, NaN in data, unknown name.

    The message must be one sentence that names the file, argument or value at fault and says what
    was expected.
    """


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite: every number after that point would be
    meaningless, so the run stops (exit status 1, ``status: failed``) instead of evaluating a
    model of NaN weights."""


def check_finite_loss(loss: Any, step: int, epoch: int | None = None) -> float:
    """``float(loss)``, or :class:`TrainingDiverged` naming the step when it is NaN or infinite.

    ``step`` counts optimisation steps from 0 over the whole run (``epoch`` is named when given).
    """
    value = float(loss)
    if not math.isfinite(value):
        where = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
        raise TrainingDiverged(
            f"training diverged: the loss became {value} at {where}; lower the learning rate "
            "(--set lr=...) or train in full precision (--precision 32-true)."
        )
    return value
