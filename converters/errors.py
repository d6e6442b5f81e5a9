"""The converters' error type: one message that names the file (or table row) and the problem."""

from __future__ import annotations

from b2s_core.errors import B2SError


class ConverterError(B2SError):
    """Bad or missing input data in a source dataset; the message names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Travels between worker processes intact (the default would call __init__ with the message only).
        return (type(self), (self.path, self.problem))
