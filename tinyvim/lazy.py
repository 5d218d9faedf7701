"""The one way tinyvim imports an optional dependency (onnxruntime, openvino, tensorrt,
polygraphy, matplotlib, ...): at the moment it is needed, with a one-line error naming the
package to install when it is missing. Everything else is imported at module top."""
from __future__ import annotations

import importlib
from types import ModuleType

from tinyvim.errors import TinyvimError


def import_optional(module: str, install: str, *, what: str | None = None) -> ModuleType:
    """`module` imported, or TinyvimError("<what> is not installed: <install>").

    install: how to get it, e.g. "pip install 'tinyvim[openvino]'". An OSError while importing
    (a binding whose native libraries do not load, like tensorrt without libnvinfer) is said
    as such."""
    name = what or module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TinyvimError(f"{name} is not installed ({exc}): {install}") from exc
    except OSError as exc:
        raise TinyvimError(f"{name} is installed but its libraries do not load ({exc}): {install}") from exc
