"""hwquant.training.steady_malloc: glibc keeps freed memory, so a CNN's training steps
stop page-faulting their buffers back in; the user's own MALLOC_* settings win. Each
case runs in a fresh process (the setting is process-wide)."""

import os
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
import torch.nn.functional as F
from torch import nn
from hwquant.training import steady_malloc
on = sys.argv[1] == "steady" and steady_malloc()
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(32 * 14 * 14, 10))
opt = torch.optim.SGD(model.parameters(), 0.01)
x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
for _ in range(30):
    step()
t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(on, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - t0) / 10)
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return env | extra


def _faults_per_step(mode: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode], capture_output=True, text=True, env=_env()
    )
    assert out.returncode == 0, out.stderr[-2000:]
    on, faults = out.stdout.split()
    return on, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_malloc_stops_the_page_faults_of_training_steps():
    on, steady = _faults_per_step("steady")
    if on == "False":
        pytest.skip("not glibc")
    _, default = _faults_per_step("default")  # glibc's own choice: hundreds per step here
    # about 0 alone; under load (a parallel test run) a few dozen, still 40x fewer
    assert steady < 20 or steady * 10 < default, f"{steady} faults per step ({default} without)"


def test_steady_malloc_sets_the_environment_and_leaves_users_settings_alone():
    code = "import os; from hwquant.training import steady_malloc as s; "
    code += "print(s(), os.environ.get('MALLOC_TRIM_THRESHOLD_'))"
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(MALLOC_TRIM_THRESHOLD_="131072"))  # fmt: skip
    assert mine.stdout.split() == ["False", "131072"], mine.stderr[-2000:]
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=_env())  # fmt: skip
    on, trim = fresh.stdout.split()
    assert on == "False" or trim == str(2**31 - 1)
