import json
import os
import subprocess
import sys
from pathlib import Path


def test_qat_under_ddp_keeps_replicas_identical(tmp_path):
    out = tmp_path / "result.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).with_name("ddp_worker.py")),
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["numel"] > 1000
    assert result["max_replica_difference"] == 0.0
