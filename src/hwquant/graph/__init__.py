"""torch.fx passes. Each is an object built from what it needs, with
``apply(gm) -> (gm, changed)``; analyses of a graph return plain values.

- :mod:`hwquant.graph.nonnegative`: which values are provably ≥ 0;
- :mod:`hwquant.graph.functional`: functional add / cat / relu → quantized modules.
"""

from hwquant.graph.functional import QuantizeFunctional
from hwquant.graph.nonnegative import input_unsigned, nonnegative_nodes, unsigned_input_modules

__all__ = ["QuantizeFunctional", "input_unsigned", "nonnegative_nodes", "unsigned_input_modules"]
