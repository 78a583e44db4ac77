"""One error type for the domain: the API, pages and CLI each render it their own way."""


class HubError(Exception):
    """A refusal with an HTTP status, a machine-readable code and a sentence for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def as_json(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


def not_found(kind: str, ident: str) -> HubError:
    return HubError(404, "NOT_FOUND", f"{kind} {ident} not found")
