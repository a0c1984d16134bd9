"""The one exception type users see.

Every failure caused by the user's input (a config key, a file, a model source) is raised
as a ``Sam3LoraError`` whose message is a single line naming the file or key and the fix.
The CLI prints it without a traceback and exits with status 2.
"""


class Sam3LoraError(Exception):
    """A user-facing error: one line, naming what is wrong and how to fix it.

    ``option`` names the parameter that fixes it, as the Python function calls it (the
    command line has a flag of the same name): the message ends ``(argument resume)`` from
    Python, and ``(--resume)`` on the command line. The library never names CLI flags.
    """

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(message)
        self.message, self.option = message, option

    def __str__(self) -> str:
        return self.worded(lambda option: f"argument {option}")

    def worded(self, name_option) -> str:
        """The message, with the fixing option named by ``name_option(option)``."""
        return f"{self.message} ({name_option(self.option)})" if self.option else self.message


class Sam3LoraWarning(UserWarning):
    """A user-facing warning: one line; ``option`` names the parameter that acts on it, worded
    as in ``Sam3LoraError`` (``(argument iou_type)`` from Python, ``(--iou-type)`` on the
    command line)."""

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(message)
        self.message, self.option = message, option

    __str__ = Sam3LoraError.__str__
    worded = Sam3LoraError.worded


class ConfigError(Sam3LoraError):
    """A config file or override is invalid."""


class DataError(Sam3LoraError):
    """A dataset file or annotation is invalid."""


class ModelLoadError(Sam3LoraError):
    """A model source cannot be loaded (hub access, missing folder, wrong id)."""


class AdapterError(Sam3LoraError):
    """An adapter folder is missing, malformed, or does not fit the base model."""
