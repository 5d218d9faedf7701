"""One exception type for every expected failure: the CLI prints its message as one
line and exits with its code, never a traceback."""


class TinyvimError(Exception):
    """An expected failure with a message that names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
