"""User-facing errors.

A :class:`UserError` is something the reader can fix (an unknown architecture, a dataset that
is missing offline, a sparsity outside [0, 1), a bad path). Its message is one line that names
the problem and the fix; the command line prints it and exits with status 2, no traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the caller's input, with a one-line message that says how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class TrainingDiverged(UserError):
    """Training produced a non-finite loss or weights: usually a learning rate or a defence
    strength (``--lam``, ``--max-grad-norm``) far too large. Nothing is cached."""
