"""The layout keeps the architecture visible: few top-level modules, one concept per module, format names
read from the formats table, device profiles in the top-level targets/ folder, comments that stay in the repo."""

import ast
import re

import pytest
from paths import ROOT

PKG = ROOT / "edgeopt"
FILES = sorted(PKG.rglob("*.py"))
RUNTIME_NAMES = re.compile(r"""["'](openvino|onnxruntime|tensorrt)["']""")


def test_few_modules_directly_under_the_package():
    top = [p.name for p in PKG.glob("*.py")]
    assert len(top) <= 8, f"{len(top)} modules directly under edgeopt/: {sorted(top)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_every_module_says_what_its_one_concept_is(path):
    """One concept per module, not a line cap: every module opens with a docstring naming what it is for."""
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    if path.name == "__main__.py":
        return
    assert doc and len(doc.split()) >= 3, f"{path.relative_to(ROOT)} has no docstring saying what it is for"


def test_no_two_modules_share_a_name_within_the_package():
    """Look-alike module names (two commands.py, structure.py beside structures.py) hide which concept is
    where; a name is used once across the package (package __init__ files aside)."""
    seen: dict[str, list[str]] = {}
    for p in FILES:
        if p.name in ("__init__.py", "__main__.py"):
            continue
        seen.setdefault(p.stem.rstrip("s"), []).append(str(p.relative_to(PKG)))
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"module names used more than once: {twice}"


def test_runtime_names_are_spelled_out_in_few_modules_outside_the_formats_package():
    spelled = [str(p.relative_to(PKG)) for p in FILES
               if "formats" not in p.relative_to(PKG).parts and RUNTIME_NAMES.search(p.read_text())]
    assert len(spelled) <= 5, f"runtime names spelled out in {len(spelled)} modules: {spelled}"


def test_device_profiles_live_in_the_top_level_targets_folder():
    from edgeopt.targets import PROFILE_DIR

    assert PROFILE_DIR.resolve() == (ROOT / "targets").resolve()
    assert sorted(PROFILE_DIR.glob("*.yaml")), "no device profiles"
    assert not list((PKG / "targets").glob("*.yaml")), "profiles belong in targets/, not inside the package"


OWN_CODE = FILES + [p for p in sorted((ROOT / "tests").rglob("*.py")) if p.name != "test_layout.py"]


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
