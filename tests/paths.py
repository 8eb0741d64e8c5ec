"""Where the tests and the repository are, for tests in any sub-folder (the support modules beside this file
are importable by name: conftest.py puts this folder on sys.path)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
