"""Typed errors. User mistakes are `EdgeOptError` subclasses whose one-line message says what to do;
the CLI maps them to exit code 2 without a traceback (EDGEOPT_DEBUG=1 shows it)."""


class EdgeOptError(Exception):
    """Base of every error edgeopt raises on purpose. Exit code 2 in the CLI."""

    exit_code = 2


class ConfigError(EdgeOptError):
    """A flag, option or config value is wrong."""


class UnknownNameError(ConfigError):
    """A name (target, technique, format, runtime) is not registered."""


class ModelLoadError(EdgeOptError):
    """The model or its weights cannot be loaded."""


class UnsafePickleError(ModelLoadError):
    """A full pickled model would execute code when loaded."""


class InputShapeError(EdgeOptError):
    """The example input does not fit the model or the artifact."""


class DataError(EdgeOptError):
    """Data is missing, empty, malformed, or contains NaN/Inf."""


class TargetError(EdgeOptError):
    """A target profile is invalid."""


class BackendMissingError(EdgeOptError):
    """An optional backend is not installed; the message names the pip extra."""


class ExportError(EdgeOptError):
    """Export to a format failed (e.g. an unsupported op)."""


class VerificationError(ExportError):
    """The exported model's outputs do not match the PyTorch model's."""


class PruningError(EdgeOptError):
    """The model cannot be pruned as asked."""


class ArtifactError(EdgeOptError):
    """An artifact file is missing, not a model, or does not fit the requested input."""


def missing_backend(package: str, extra: str) -> BackendMissingError:
    return BackendMissingError(
        f"{package} is not installed: install it with `pip install 'edgeopt[{extra}]'`"
    )
