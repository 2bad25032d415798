"""Compute platform: CUDA + NCCL when a GPU is present, otherwise CPU + gloo.

megatron-core is written for CUDA: it asks for ``torch.cuda.current_device()``, creates tensors with
``device="cuda"``, moves tensors with ``.cuda()``, forks the CUDA RNG for tensor-parallel init and
dropout, and asserts ``torch.cuda.FloatTensor`` in gradient clipping. On a machine without a GPU
this module makes the CPU stand in for CUDA device 0, so megatron-core's own classes (models,
pipeline schedules, DDP, optimizer, clipping, checkpointing) run unchanged on gloo:

* factory calls and moves that name a CUDA device are redirected to the CPU, and requests for
  pinned (page-locked) host memory, which needs a CUDA driver, are dropped (a torch function mode,
  so it covers every call site without touching megatron-core's files);
* ``Tensor.type()`` reports CUDA type names for CPU tensors, consistently with that alias;
* ``torch.cuda.current_device/synchronize/...`` and the CUDA RNG state calls are routed to the CPU
  and its default generator, so megatron-core's model-parallel RNG tracker forks the CPU RNG.

This is the only module of the project that touches ``torch.cuda`` behaviour. On a GPU it changes
nothing. megatron-core's distributed optimizer runs on gloo too (its reduce-scatter and all-gather), and
resumes exactly (its torch-Adam fallback's step counts are mended by
:mod:`megatron_dwm.training.torch_adam_resume`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd as _autograd
from torch.autograd.graph import _engine_run_backward
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Platform:
    """Where the LLM runs and which collective backend it uses."""

    device: torch.device
    backend: str  # "nccl" or "gloo"

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def use_transformer_engine(self) -> bool:
        """Whether the LLM uses Transformer Engine's layers: on CUDA, where TE imports."""
        return self.device.type == "cuda" and _transformer_engine_importable()

    @property
    def pin_memory(self) -> bool:
        """Whether data loaders pin host memory: their batches go to a CUDA device."""
        return self.device.type == "cuda"

    @property
    def device_name(self) -> str:
        """The GPU's name ("cpu" on the CPU), e.g. for its peak FLOP/s."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    def peak_memory_gib(self) -> float | None:
        """The GPU memory high-water mark since the start, in GiB (None on the CPU: not measured)."""
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None


_PLATFORM: Platform | None = None
_CPU = torch.device("cpu")


def init_platform(force_cpu: bool | None = None, verbose: bool = True) -> Platform:
    """Select the platform once per process (idempotent) and return it.

    ``force_cpu`` defaults to the environment variable ``MEGATRON_DWM_FORCE_CPU=1``.
    """
    global _PLATFORM
    if _PLATFORM is not None:
        return _PLATFORM
    if _gpu_in_use(force_cpu):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        _PLATFORM = Platform(torch.device("cuda", torch.cuda.current_device()), "nccl")
        if verbose and int(os.environ.get("RANK", "0")) == 0 and not _transformer_engine_installed():
            print("megatron-dwm: Transformer Engine is not installed: the model uses megatron-core's local layer "
                  "spec (slower; install transformer-engine for the fused layers)", flush=True)
    else:
        _install_cpu_compatibility()
        _PLATFORM = Platform(_CPU, "gloo")
        if verbose and int(os.environ.get("RANK", "0")) == 0:
            print("megatron-dwm: no GPU in use, CPU mode on (gloo; megatron-core's CUDA calls run on the CPU)", flush=True)
    return _PLATFORM


def _gpu_in_use(force_cpu: bool | None = None) -> bool:
    """A GPU is present and CPU mode is not forced (``force_cpu`` or ``MEGATRON_DWM_FORCE_CPU=1``)."""
    if force_cpu is None:
        force_cpu = os.environ.get("MEGATRON_DWM_FORCE_CPU", "0") == "1"
    return torch.cuda.is_available() and not force_cpu


def _transformer_engine_installed() -> bool:
    """Whether Transformer Engine can be found (not imported: that takes seconds)."""
    return importlib.util.find_spec("transformer_engine") is not None


@functools.cache
def _transformer_engine_importable() -> bool:
    """Whether Transformer Engine imports (any failure means it cannot be used)."""
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def get_platform() -> Platform:
    """The platform chosen by `init_platform` (selecting it now if nobody did)."""
    return init_platform()


def validate_platform_options(context_parallel_size: int = 1) -> list[str]:
    """Problems with options the current platform cannot honour (empty if none)."""
    if context_parallel_size > 1 and not (_gpu_in_use() and _transformer_engine_importable()):
        where = "Transformer Engine is not available" if _gpu_in_use() else "no GPU is in use"
        return [f"--context-parallel-size {context_parallel_size} needs Transformer Engine's attention on a "
                f"GPU ({where}): megatron-core's context-parallel attention is TEDotProductAttention, its "
                "local attention takes --context-parallel-size 1 only"]
    return []


# --------------------------------------------------------------------------------------------
# CPU compatibility layer
# --------------------------------------------------------------------------------------------

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.int16: "torch.cuda.ShortTensor",
    torch.int8: "torch.cuda.CharTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def _names_cuda(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True  # a bare index means a CUDA device
    if isinstance(device, (str, torch.device)):
        return torch.device(device).type == "cuda"
    return False


class _CudaOnCpu(TorchFunctionMode):
    """Redirects CUDA device arguments to the CPU for every torch call made while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.autograd.backward or func is torch.Tensor.backward:
            return self._backward(func, *args, **kwargs)
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _CUDA_TYPE_NAMES.get(args[0].dtype, func(*args))
        if _names_cuda(kwargs.get("device")):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to:
            args = tuple(_CPU if _names_cuda(a) else a for a in args)
        return func(*args, **kwargs)


    def _backward(self, func, tensors, gradient=None, retain_graph=None, create_graph=False, inputs=None,
                  grad_tensors=None):
        """`torch.autograd.backward` / `Tensor.backward` with this mode on for the whole backward pass.

        A mode is off while its own ``__torch_function__`` runs, and calling `func` there would run the
        backward pass without it, where megatron-core's tensor-parallel layers and activation
        recomputation create tensors on "cuda" too. So the autograd engine is entered here, under the
        mode, as `torch.autograd.backward` enters it (the same argument handling).
        """
        grads = grad_tensors if func is torch.autograd.backward else gradient
        roots = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
        inputs = () if inputs is None else (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        grads = _autograd._make_grads(roots, _autograd._tensor_or_tensors_to_tuple(grads, len(roots)),
                                      is_grads_batched=False)
        with self:
            _engine_run_backward(roots, grads, create_graph if retain_graph is None else retain_graph, create_graph,
                                 inputs, allow_unreachable=True, accumulate_grad=True)


class _CpuStream:
    """Stand-in for `torch.cuda.Stream`: work on the CPU is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event

    def __enter__(self) -> "_CpuStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _install_cpu_compatibility() -> None:
    cuda = torch.cuda
    cpu_generator = torch.default_generator

    cuda.current_device = lambda: 0
    cuda.synchronize = lambda device=None: None
    cuda.get_rng_state = lambda device="cuda": cpu_generator.get_state()
    cuda.set_rng_state = lambda new_state, device="cuda": cpu_generator.set_state(new_state)
    cuda.manual_seed = lambda seed: cpu_generator.manual_seed(seed)
    cuda.manual_seed_all = lambda seed: cpu_generator.manual_seed(seed)
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state
    cuda.default_generators = (cpu_generator,)
    cuda.Stream = _CpuStream
    cuda.current_stream = lambda device=None: _CpuStream()
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.memory_allocated = lambda device=None: 0
    cuda.max_memory_allocated = lambda device=None: 0
    cuda.empty_cache = lambda: None

    # megatron-core's tensor-parallel RNG tracker binds these helpers at import time.
    from megatron.core.tensor_parallel import random as tp_random

    tp_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: (
        cpu_generator.get_state().clone() if clone else cpu_generator.get_state()
    )
    tp_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: cpu_generator.set_state(new_state)

    # Inside the tracker's fork the "CUDA" generator *is* the CPU generator, so megatron-core's
    # check that the CPU RNG did not move there is expected to fire: drop that one message.
    logging.getLogger(tp_random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage())

    _CudaOnCpu().__enter__()

