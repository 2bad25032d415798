"""Run the Triton loss kernels on CPU through Triton's interpreter.

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when `megatron_dwm.ops.triton_rows`
is first imported (the package imports it lazily, on first use of the fused kernel), so setting it
here, before any test runs, is enough; ranks spawned by the tests inherit it.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
