"""The user's own code named on the command line, `path/file.py:name` or `package.module:name`: model factories
(--model), data functions (--data) and metrics (--metric) are all loaded here, one way:

- a .py file is imported under a name derived from its resolved path (two files with the same stem do not
  shadow each other), registered in sys.modules so that its dataclasses and pickling work;
- no __pycache__ is ever written beside the user's files (sys.dont_write_bytecode while importing);
- every failure is one line of the caller's error type naming the spec: a missing file, an import that
  raises, a missing attribute (with did-you-mean), a call that raises."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeopt.errors import ConfigError, EdgeOptError, first_line
from edgeopt.registry import split_ref


def split(spec: str, what: str, error: type[EdgeOptError] = ConfigError) -> tuple[str, str]:
    """'dir/file.py:fn' -> ('dir/file.py', 'fn'); the last colon separates, so 'C:/x/f.py:fn' works."""
    target, name = split_ref(spec)
    if not target or not name:
        raise error(f"{what} {spec!r}: use path/file.py:name or package.module:name")
    return target, name


def import_target(target: str, what: str, error: type[EdgeOptError] = ConfigError) -> ModuleType:
    """Import a .py file (by path) or a module (by dotted name), never writing bytecode. `what` starts the
    error message, e.g. "cannot load metric function m.py:acc"."""
    old = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # never write __pycache__ beside the user's files
    try:
        if target.endswith(".py"):
            return _import_file(Path(target), what, error)
        try:
            return importlib.import_module(target)
        except EdgeOptError:
            raise
        except ImportError as e:
            raise error(f"{what}: {first_line(e)}") from None
        except Exception as e:  # the module's own code raised while being imported
            raise error(f"{what}: importing {target} failed: {first_line(e)}") from None
    finally:
        sys.dont_write_bytecode = old


def _import_file(path: Path, what: str, error: type[EdgeOptError]) -> ModuleType:
    if not path.is_file():
        raise error(f"{what}: file {path} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"_edgeopt_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look the module up by name
    try:
        spec.loader.exec_module(module)
    except EdgeOptError:
        sys.modules.pop(name, None)
        raise
    except BaseException as e:  # SyntaxError, ImportError, SystemExit from a script-like file ...
        sys.modules.pop(name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise error(f"{what}: importing {path} failed: {first_line(e)}") from None
    return module


def load(spec: str, what: str, error: type[EdgeOptError] = ConfigError) -> Any:
    """The object `name` of `target` in 'target:name'; a missing attribute gets a did-you-mean."""
    target, name = split(spec, what, error)
    module = import_target(target, f"cannot load {what} {spec}", error)
    if not hasattr(module, name):
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(name, public, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise error(f"cannot load {what} {spec}: {target} has no attribute {name!r}{hint}")
    return getattr(module, name)


def load_callable(spec: str, what: str, error: type[EdgeOptError] = ConfigError) -> Callable:
    fn = load(spec, what, error)
    if not callable(fn):
        raise error(f"{what} {spec}: {split(spec, what, error)[1]} is {type(fn).__name__}, not a function")
    return fn


def call(fn: Callable, spec: str, what: str, error: type[EdgeOptError] = ConfigError, *args, **kwargs) -> Any:
    """Call the user's function; whatever it raises becomes one line naming the spec (our own errors pass)."""
    try:
        return fn(*args, **kwargs)
    except EdgeOptError:
        raise
    except Exception as e:
        raise error(f"{what} {spec} raised {first_line(e)}") from None
