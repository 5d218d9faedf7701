"""The one exception type of tinyvim.plugins: its message is a complete, one-line
explanation meant to be shown to a user as is (the CLI prints it without a traceback)."""


class PluginError(RuntimeError):
    """A plugin library is missing, cannot be built, or rejected its inputs."""
