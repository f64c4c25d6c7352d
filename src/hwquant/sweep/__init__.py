"""Design-space sweeps: integer vs minifloat formats at every weight × activation bit
width, each point post-training quantized with several techniques (the best kept),
costed in FPGA LUTs, with the Pareto front exported to QONNX and verified.

- :mod:`~hwquant.sweep.space`: the points (format families, ExMy lists);
- :mod:`~hwquant.sweep.models`: the float models, trained once and cached;
- :mod:`~hwquant.sweep.point`: one point (techniques, winner, cost);
- :mod:`~hwquant.sweep.run`: in this process, local worker processes or Ray, resumable;
- :mod:`~hwquant.sweep.report`: Pareto front, heatmaps, the int-vs-minifloat tally.

Example:
    >>> pts = design_space(["digits-cnn"], w_bits=[4], a_bits=[8], families=["int"])
    >>> [p.key for p in pts]
    ['digits-cnn/int/W4/A8/INT4n/INT8']
"""

from hwquant.sweep.point import Settings, evaluate_point
from hwquant.sweep.run import run_sweep
from hwquant.sweep.space import FAMILIES, Point, design_space

__all__ = ["FAMILIES", "Point", "Settings", "design_space", "evaluate_point", "run_sweep"]
