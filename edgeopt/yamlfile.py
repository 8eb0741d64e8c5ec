"""Reading a YAML file the user names (a run config, a target profile) as a mapping: a missing file, YAML that
does not parse, nesting too deep to read and a document that is not a mapping are each one line of the
caller's error type naming the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from edgeopt.errors import EdgeOptError, first_line


def load_mapping(path: str | Path, what: str, error: type[EdgeOptError], expected: str = "a mapping") -> dict:
    """The mapping in the YAML file `path` ({} for an empty file). `what` names the file in the messages
    ("--config", "target profile"); `expected` says what the document must be."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid YAML: {first_line(e, with_type=False)}") from None
    except RecursionError:  # the YAML reader recurses once per level of nesting
        raise error(f"{what} {path} is nested too deeply to read") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise error(f"{what} {path}: expected {expected}, got {type(doc).__name__}")
    return doc
