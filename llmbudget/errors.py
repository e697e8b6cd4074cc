"""The project's exceptions. Library code raises these; the CLI and HTTP edges turn them into messages."""

from __future__ import annotations


class LLMBudgetError(Exception):
    """Base class of every error llmbudget raises on purpose."""

    #: HTTP status the JSON API answers with when this error reaches it.
    http_status: int = 400
    #: short machine-readable code for the JSON error shape
    code: str = "error"


class CommandNotRun(LLMBudgetError):
    """`llmbudget run` could not start its command; the CLI exits as a shell does (127, 126)."""

    code = "command_not_run"

    def __init__(self, message: str, exit_code: int) -> None:
        #: 127: no such command; 126: found but not executable
        self.exit_code = exit_code
        super().__init__(message)


class ValidationError(LLMBudgetError, ValueError):
    """A value failed validation; the message names the field."""

    code = "invalid"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ConfigError(LLMBudgetError):
    """A configuration file is broken; the message names the file, line and key."""

    code = "config_error"

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, key: str | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.key = key
        where = ""
        if path:
            where = f"{path}:{line}" if line else path
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"{prefix}{keypart}{message}")


class StorageError(LLMBudgetError):
    """The ledger cannot be opened or written."""

    code = "storage_error"
    http_status = 503


class DatabaseUnreachable(StorageError):
    """The database server does not answer; the message names the URL (password masked) and what to check."""

    code = "database_unreachable"


class DatabaseMissing(DatabaseUnreachable):
    """The PostgreSQL server answers but has no database of that name; the message says how to create it."""

    code = "database_missing"


class BudgetUnavailable(StorageError):
    """Budget counters cannot be read or seeded: enforcement fails closed (`budgets.on_error: open` lets calls through)."""

    code = "budget_unavailable"


class NotFound(LLMBudgetError):
    """A named thing does not exist."""

    code = "not_found"
    http_status = 404


class BudgetExceeded(LLMBudgetError):
    """A call would cross a hard budget limit; the message is the notice shown to users."""

    code = "budget_exceeded"
    http_status = 429

    def __init__(
        self,
        message: str,
        *,
        budget: str | None = None,
        reset: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        self.budget = budget
        self.reset = reset
        self.retry_after_s = retry_after_s
        super().__init__(message)
