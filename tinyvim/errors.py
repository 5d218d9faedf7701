"""One exception type for every expected failure: the CLI prints its message as one
line and exits with its code, never a traceback; and `error_reason`, the line of a runtime's
own exception that such a message quotes."""
from __future__ import annotations

import re

#: where a runtime says which C++ line raised, before the reason (OpenVINO: "Exception from
#: src/...:84:", "Check 'x' failed at src/...:887:"; either may share a line with the reason)
_LOCATION = re.compile(r"^(?:\[\s*\w+\s*\]\s*)?(?:Exception from \S+:\d+:?|Check '.*?' failed at \S+:\d+:?)\s*")


def error_reason(exc: BaseException, limit: int = 300) -> str:
    """A runtime's exception text reduced to its reason, on one line of at most `limit`
    characters: location prefixes dropped, "... failed with X:" joined with the line after it
    (OpenVINO), ONNX Runtime's "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : ..." kept whole."""
    lines = []
    for line in str(exc).splitlines():
        line = line.strip()
        while (shorter := _LOCATION.sub("", line, count=1)) != line:
            line = shorter
        if line:
            lines.append(line)
    if not lines:
        return type(exc).__name__
    reason = lines[0]
    if reason.endswith(":") and len(lines) > 1:
        reason = f"{reason} {lines[1]}"
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


class TinyvimError(Exception):
    """An expected failure with a message that names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
