"""Exceptions with messages meant for the person running the pipeline."""


class EmbedsegError(Exception):
    """Base class: every error here carries a one-line message naming the problem."""


class ConfigError(EmbedsegError):
    """The configuration is invalid or inconsistent with the data."""


class InputError(EmbedsegError):
    """An input dataset is missing, malformed or inconsistent."""


class StoreError(EmbedsegError):
    """The store is unreachable or holds something unexpected."""


class RunConflictError(EmbedsegError):
    """The output or store already holds a different run."""


class CheckpointError(EmbedsegError):
    """A model checkpoint is missing, corrupt or does not match the config."""


class NotImplementedStageError(EmbedsegError):
    """A configured stage does not exist yet."""
