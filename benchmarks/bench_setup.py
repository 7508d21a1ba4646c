"""The start every benchmark script shares: import it before anything else.

It puts the repository root on ``sys.path``, so the scripts run from a checkout without an install. With
``--smoke`` on the command line it selects Triton's CPU interpreter, which has to happen before the first
``import triton`` (the CI smoke tests run the kernels that way).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
