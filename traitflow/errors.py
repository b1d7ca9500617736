"""Errors a user can cause. Each carries a one-line message; the CLI prints it and exits 2."""

from pathlib import Path


class TraitflowError(Exception):
    """A mistake in the user's specs, data, flags or services: one line, no traceback."""


class TransientError(TraitflowError):
    """A service that did not answer (a judge or a bucket down, overloaded, timing out): a later
    try may pass, so the step's retry policy retries it. Every other TraitflowError is the user's
    to fix and fails at once."""


class SpecError(TraitflowError):
    """A problem located in a file: names the file, the line (when known) and the field."""

    def __init__(self, file: Path | str | None, message: str, line: int | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self.format())

    def format(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{self.message}"


class SpecErrors(TraitflowError):
    """Several SpecErrors collected, so `traitflow validate` can show all of them at once."""

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("\n".join(e.format() for e in errors))


class SpecWarning(SpecError):
    """Same shape as SpecError (file, line, field, message) but never raised: a problem worth one
    line that stops nothing, e.g. a key we do not know in a file whose format evolves upstream."""
