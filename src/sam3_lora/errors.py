"""The one exception type users see.

Every failure caused by the user's input (a config key, a file, a model source) is raised
as a ``Sam3LoraError`` whose message is a single line naming the file or key and the fix.
The CLI prints it without a traceback and exits with status 2.
"""


class Sam3LoraError(Exception):
    """A user-facing error: one line, naming what is wrong and how to fix it."""


class ConfigError(Sam3LoraError):
    """A config file or override is invalid."""


class DataError(Sam3LoraError):
    """A dataset file or annotation is invalid."""


class ModelLoadError(Sam3LoraError):
    """A model source cannot be loaded (hub access, missing folder, wrong id)."""


class AdapterError(Sam3LoraError):
    """An adapter folder is missing, malformed, or does not fit the base model."""
