"""The one exception type of tinyvim.plugins: its message is a complete, one-line
explanation meant to be shown to a user as is. It is a TinyvimError, so the CLI prints
it as one line and exits non-zero, never with a traceback."""
from tinyvim.errors import TinyvimError


class PluginError(TinyvimError):
    """A plugin library is missing, cannot be built, or rejected its inputs."""
