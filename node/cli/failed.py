"""How a command ends with an error the user can act on (kept free of heavy imports:
`ferry --help` loads it)."""

from __future__ import annotations


class Failed(SystemExit):
    """Raised by `ui.fail`: `main` writes the message (as JSON too under --json) and exits
    with `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message
