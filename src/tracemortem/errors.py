"""The project's own error types; the CLI maps each to one line on stderr and an exit code."""


class TracemortemError(Exception):
    """Base class: anything the CLI reports as one clear line."""

    exit_code = 4


class InputError(TracemortemError):
    """The input cannot be read (missing, empty, corrupt, hostile). CLI exit code 3."""

    exit_code = 3


class ConfigError(TracemortemError):
    """Bad usage: an unknown threshold, a malformed config file or option. CLI exit code 2."""

    exit_code = 2
