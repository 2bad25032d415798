"""Choice between the fused Triton row kernels and the PyTorch reference (`--loss-kernel`)."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

LOSS_KERNELS = ("auto", "fused", "torch")


def _triton_rows() -> ModuleType | None:
    """The Triton kernels module, or None where triton cannot be imported."""
    try:
        return importlib.import_module("megatron_dwm.ops.triton_rows")
    except ImportError:
        return None


def check_loss_kernel(name: str) -> str:
    if name not in LOSS_KERNELS:
        raise ValueError(f"unknown loss kernel {name!r}; expected one of {LOSS_KERNELS}")
    return name


def resolve_loss_kernel(name: str, device: torch.device) -> str:
    """`auto` -> `fused` on CUDA when triton imports, else `torch`; the others are checked and kept."""
    check_loss_kernel(name)
    if name == "auto":
        return "fused" if device.type == "cuda" and _triton_rows() is not None else "torch"
    return name


def row_kernels(name: str, device: torch.device) -> ModuleType:
    """The module whose `row_stats`, `write_grad` and `loss_and_grad` serve kernel `name`."""
    if resolve_loss_kernel(name, device) == "torch":
        return importlib.import_module("megatron_dwm.ops.torch_rows")
    module = _triton_rows()
    if module is None:
        raise RuntimeError("loss kernel 'fused' needs triton, which is not installed")
    return module
