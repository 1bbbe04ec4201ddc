"""Why a change through the web service was refused: a field at fault, a missing entry, a conflict."""

from __future__ import annotations


class Refused(Exception):
    """A refused change; nothing was written."""

    code = "refused"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidField(Refused):
    """A value that cannot be used; ``field`` names it as the API spells it."""

    code = "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field)


class NotFound(Refused):
    code = "not_found"


class Conflict(Refused):
    """The change contradicts what is stored (e.g. a vacation for a retired address)."""

    code = "conflict"


class Forbidden(Refused):
    code = "forbidden"
