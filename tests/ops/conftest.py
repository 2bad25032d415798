"""Where the loss-kernel tests run.

By default on CPU, with the Triton kernels in Triton's interpreter. Triton reads TRITON_INTERPRET
when a kernel is decorated, i.e. when `megatron_dwm.ops.triton_rows` is first imported (the package
imports it lazily, on first use of the fused kernel), so setting it here, before any test runs, is
enough; ranks spawned by the tests inherit it.

With ``MEGATRON_DWM_TEST_DEVICE=cuda`` (what ``bench/gpu_check.py`` sets) the same tests put their
tensors on the GPU and the kernels are compiled for it instead.
"""

import os

if os.environ.get("MEGATRON_DWM_TEST_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
