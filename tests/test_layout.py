"""The layout keeps the architecture visible: few top-level modules, small modules and functions, format names
read from the formats table, device profiles in the top-level targets/ folder, comments that stay in the repo."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PKG = ROOT / "edgeopt"
FILES = sorted(PKG.rglob("*.py"))
RUNTIME_NAMES = re.compile(r"""["'](openvino|onnxruntime|tensorrt)["']""")


def test_few_modules_directly_under_the_package():
    top = [p.name for p in PKG.glob("*.py")]
    assert len(top) <= 8, f"{len(top)} modules directly under edgeopt/: {sorted(top)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 300, f"{path.relative_to(ROOT)} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() has {length} lines"


def test_runtime_names_are_spelled_out_in_few_modules_outside_the_formats_package():
    spelled = [str(p.relative_to(PKG)) for p in FILES
               if "formats" not in p.relative_to(PKG).parts and RUNTIME_NAMES.search(p.read_text())]
    assert len(spelled) <= 5, f"runtime names spelled out in {len(spelled)} modules: {spelled}"


def test_device_profiles_live_in_the_top_level_targets_folder():
    from edgeopt.targets import PROFILE_DIR

    assert PROFILE_DIR.resolve() == (ROOT / "targets").resolve()
    assert sorted(PROFILE_DIR.glob("*.yaml")), "no device profiles"
    assert not list((PKG / "targets").glob("*.yaml")), "profiles belong in targets/, not inside the package"


OWN_CODE = FILES + [p for p in sorted((ROOT / "tests").glob("*.py")) if p.name != "test_layout.py"]


@pytest.mark.parametrize("path", OWN_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_comments_do_not_point_outside_the_repository(path):
    text = path.read_text()
    for pattern in (r"FIELD_NOTES", r"\bthe lecture\b", r"\bissue \d+\b", r"\(issue \d+\)"):
        hit = re.search(pattern, text, flags=re.IGNORECASE)
        assert hit is None, f"{path.relative_to(ROOT)} points outside the repository: {hit.group(0)!r}"


def test_design_document_exists():
    text = (ROOT / "docs" / "design.md").read_text()
    for section in ("Layout and layers", "How to add"):
        assert section in text
