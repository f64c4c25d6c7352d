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
