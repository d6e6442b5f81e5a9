"""Reading torch files without running code: ``torch.load(..., weights_only=True)``, its refusals in one line.

When torch refuses a file its message runs over many lines, carries terminal escapes and suggests
``weights_only=False``; the CLI prints one line naming the file and the problem instead.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import torch

_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


class UnreadableTorchFile(ValueError):
    """torch.load failed; the message is one line (the caller prefixes the path)."""


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes: the error, if any, says what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not a checkpoint
        raise UnreadableTorchFile(load_failure(err)) from None


def load_failure(err: BaseException) -> str:
    """One line for a failed weights-only load: the refused global, or the unpickler's first detail."""
    text = str(err)
    named = _GLOBAL.search(text)
    if named:
        return f"refused: it names the Python global '{named.group(1)}', not only tensors and containers"
    detail = _ESCAPES.sub("", text.split("WeightsUnpickler error:", 1)[-1])
    first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__
