"""``python -m hwquant.core.kernels``: build the compiled kernel now (``make`` does)."""

import sys

from hwquant.core.kernels import main

sys.exit(main())
