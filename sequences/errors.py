"""One error type for the domain: the API, pages and CLI each render it their own way."""

from typing import Any


class HubError(Exception):
    """A refusal with an HTTP status, a machine-readable code and a sentence for people."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # More for programs, beside the sentence: e.g. the conflicting modes and resources.
        self.details = details or {}

    def as_json(self) -> dict[str, Any]:
        return {**self.details, "error": self.message, "code": self.code}


def not_found(kind: str, ident: str) -> HubError:
    return HubError(404, "NOT_FOUND", f"{kind} {ident} not found")
