import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")
# FPGA-sized models: one intra-op thread is faster and far more stable on a shared
# 2-core machine (OpenMP spin-waits stall tiny kernels under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _kernels_loaded():
    """Load (or build) the compiled kernels once, before any test: where they cannot be
    built, their one warning (also printed by ``make``) lands here, not inside a test
    that checks its own warnings. tests/core/test_kernels.py covers both paths."""
    import warnings

    from hwquant.core import kernels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kernels.load()
