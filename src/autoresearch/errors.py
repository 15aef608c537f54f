"""Errors a user can act on. The CLI prints them without a traceback."""

from __future__ import annotations


class AutoresearchError(Exception):
    """A failure with a message that says what went wrong and what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class ConfigError(AutoresearchError):
    """A preset, dataset name, option or config file is wrong."""


class DataError(AutoresearchError):
    """Data is missing, corrupt or unreachable."""


class LedgerError(AutoresearchError):
    """The ledger or results.tsv cannot be read, or cannot be trusted."""
