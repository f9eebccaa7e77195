"""The errors a user can cause. The `jtts` command prints any of them as one line and exits with its
`exit_code`; every other exception is a bug in jtts and keeps its traceback.

    JttsError                  exit 1: bad data, a missing or damaged model, a download or I/O problem
      UsageError               exit 2: options that contradict each other or the input
      CheckpointError          a .pt checkpoint that cannot be converted (jtts.convert)
      ModelDirError            a model directory that is missing, incomplete or of another kind
      HubError                 a download or model-cache problem
      DataError                a training/preprocessing data set that cannot be read
      NothingToSpeak           text with nothing speakable in it
      NonFiniteLoss            exit 3: training stopped by a non-finite loss

They subclass ValueError as well, for callers that caught ValueError before this module existed.
"""
from __future__ import annotations


class JttsError(ValueError):
    """An error caused by the user's input, data, models or environment; one line, no traceback."""
    exit_code = 1


class UsageError(JttsError):
    """Options that contradict each other or the input (like argparse's own errors)."""
    exit_code = 2


class CheckpointError(JttsError):
    """A checkpoint that cannot be converted; the message names the file and the offending keys."""


class ModelDirError(JttsError):
    """A model directory is missing, incomplete, or holds another kind of model."""


class HubError(JttsError):
    """A download or cache problem, described in one line."""


class DataError(JttsError):
    """A data set that cannot be used as asked; the message names the file (and line). `problems` holds the
    `FILE:LINE: reason` lines, if any."""

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class NothingToSpeak(JttsError):
    """Text with nothing a model can speak."""


class NonFiniteLoss(JttsError):
    """Training produced a non-finite loss; the message names the step and the last good checkpoint."""
    exit_code = 3

    def __init__(self, step: int, loss: float, last_checkpoint: int | None, directory):
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
        where = (f"last good checkpoint: step {last_checkpoint} in {directory}" if last_checkpoint is not None
                 else "no checkpoint was written yet")
        super().__init__(f"loss became {loss} at step {step}; stopped ({where})")


def one_line(e: BaseException, limit: int = 600) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
