"""Library messages that give a megatron-dwm user nothing to act on, silenced in one place.

torch and megatron-core announce, on every rank and before the first useful line, which optional
packages are missing (Apex, Transformer Engine), what they deprecate in their own API, and which
index file they just opened. None of it concerns a user of this project, whose choices (the layer
spec, the optimizer, the checkpoint writer) are made and reported here. `quiet_library_messages`
drops exactly those messages, each matched by its text, so that any other warning still shows.
It imports nothing but the standard library: call it first, before torch or megatron-core is
imported (pretrain_dwm.py and tools do), since some of these are emitted at import time.
"""

from __future__ import annotations

import logging
import re
import warnings

# Python warnings (warnings.warn), by message: matched from the start of the message.
QUIET_WARNINGS: tuple[str, ...] = (
    r"Transformer Engine and Apex are not installed",  # megatron-core falls back to torch: nothing to do
    r"Apex is not installed",
    r"Only transformer-engine>=1\.7\.0 supports MoE experts",  # no MoE here
    r"Could not determine (rank|world size)",  # megatron-core asked before torch.distributed was set up
    r"full scope is deprecated",  # megatron-core's TransformerConfig default, not a flag of ours
    r"MimoModelConfig is experimental",
    r"megatron\.core\.\S+ is deprecated",
)

# Log records (logging), by logger: messages matched from the start.
QUIET_LOG_RECORDS: dict[str, tuple[str, ...]] = {
    "torch.utils.cpp_extension": (r"No CUDA runtime is found",),  # CPU mode says so in one line
    "megatron.core.models.gpt.gpt_model": (r"GPTModel IS DEPRECATED",),
    "megatron.core.dist_checkpointing.strategies.torch": (r"MCore's async save is deprecated",),
    "megatron.core.datasets.blended_dataset": (r"Cannot save the BlendedDataset indexes because path_to_cache",),
}

# Loggers that report routine progress (each index file opened, each cache written) at INFO on every
# rank; they keep their warnings and errors.
CHATTY_LOGGERS: tuple[str, ...] = (
    "megatron.core.datasets.indexed_dataset",
    "megatron.core.datasets.gpt_dataset",
    "megatron.core.datasets.blended_megatron_dataset_builder",
    "megatron.core.datasets.blended_dataset",
    "megatron.core.datasets.utils",
    "megatron.core.tokenizers",
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message matches one of the patterns."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


_installed = False


def quiet_library_messages() -> None:
    """Silence the messages listed above (idempotent); everything else still shows."""
    global _installed
    if _installed:
        return
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, patterns in QUIET_LOG_RECORDS.items():
        logging.getLogger(name).addFilter(_DropMessages(patterns))
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _installed = True
