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


class TimeBudgetError(EdgeOptError):
    """The run's --time-budget ran out inside a step that measures as it goes (a latency table): what it
    measured is kept for the next run, the step is not finished. Not a failure of the candidate."""


class WontFitError(TimeBudgetError):
    """A step measured its first parts and forecast that it cannot end before the deadline, so it stopped
    there (a fine-tuning: its remaining steps at the rate of its first ones). Time is left for cheaper work:
    the search goes on. `need_s`: what the whole step would have taken."""

    def __init__(self, message: str, need_s: float):
        super().__init__(message)
        self.need_s = need_s


class ArtifactError(EdgeOptError):
    """An artifact file is missing, not a model, or does not fit the requested input."""


def first_line(error: BaseException, limit: int = 200, with_type: bool = True) -> str:
    """An error as one line: its type and the first line of its message (at most `limit` characters), or that
    line alone (`with_type=False`) where the words around it already say what failed; the type alone when
    the message is empty."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0][:limit]}" if with_type else lines[0][:limit]


def missing_backend(package: str, extra: str) -> BackendMissingError:
    return BackendMissingError(
        f"{package} is not installed: install it with `pip install 'edgeopt[{extra}]'`"
    )


def one_line(error, source: str = "", model: type | None = None, cls: type[EdgeOptError] = ConfigError,
             where: str | None = None) -> EdgeOptError:
    """A pydantic ValidationError as one typed line: `source: field 'path.to.key': message`. With `model` (the class
    validated), an unknown key gets a did-you-mean among the keys allowed at that place. The only place
    where pydantic's multi-line errors are turned into ours."""
    import difflib

    err = error.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    field = where or ".".join(loc) or "value"
    msg = str(err.get("msg", error)).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden" and model is not None and loc:
        known = _keys_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        msg = f"unknown key{hint} (known: {', '.join(known)})"
    return cls(f"{source + ': ' if source else ''}field '{field}': {msg}")


def _keys_at(model: type, path: list[str]) -> list[str]:
    """The field names of the (nested) pydantic model reached by following `path` from `model`."""
    for part in path:
        fields = getattr(model, "model_fields", {})
        if part not in fields or not isinstance(fields[part].annotation, type):
            return []
        model = fields[part].annotation
    return list(getattr(model, "model_fields", {}))
