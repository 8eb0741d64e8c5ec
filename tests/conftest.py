import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # One demo training per test session, never touching the user's real cache.
    os.environ.setdefault("EDGEOPT_CACHE_DIR", str(tmp_path_factory.mktemp("edgeopt-cache")))
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny():
    import tinynet

    return tinynet.make()


@pytest.fixture
def tiny_plain():
    import tinynet

    return tinynet.make_plain()


@pytest.fixture
def example():
    return torch.randn(1, 1, 16, 16)


@pytest.fixture
def tinynet_spec():
    return f"{TESTS / 'tinynet.py'}:make"


@pytest.fixture(scope="session")
def fast_bench():
    from edgeopt.measure.timing import BenchConfig

    return BenchConfig(warmup_runs=2, warmup_s=0.0, min_runs=10, max_time_s=0.5)
