"""How the world's ranks are split between the LLM and the DWM: plain arithmetic, importable
without torch or megatron-core (argument checks use it before anything heavy is loaded).
``megatron_dwm.parallel`` builds the process groups from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankLayout:
    """How the world's ranks are split between the LLM and the DWM."""

    world_size: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    dwm_ranks: int = 0

    @property
    def llm_world_size(self) -> int:
        return self.world_size - self.dwm_ranks

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size

    @property
    def data_parallel_size(self) -> int:
        return self.llm_world_size // self.model_parallel_size

    def is_llm_rank(self, rank: int) -> bool:
        return rank < self.llm_world_size

    def problems(self) -> list[str]:
        """Everything wrong with this layout, as messages naming the flags at fault."""
        tp, pp, a = self.tensor_model_parallel_size, self.pipeline_model_parallel_size, self.dwm_ranks
        if tp < 1 or pp < 1:
            return [f"--tensor-model-parallel-size ({tp}) and --pipeline-model-parallel-size ({pp}) must be >= 1"]
        if a < 0:
            return [f"--dwm-ranks ({a}) must be >= 0"]
        if self.llm_world_size < 1:
            return [f"--dwm-ranks {a} leaves no LLM rank in a world of {self.world_size}"]
        if self.llm_world_size % (tp * pp):
            where = f"world size {self.world_size}" + (f" minus --dwm-ranks {a}" if a else "")
            return [
                f"{where} = {self.llm_world_size} LLM ranks is not divisible by "
                f"--tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp} = {tp * pp}"
            ]
        if a > 1 and self.data_parallel_size % a:
            return [f"--dwm-ranks {a} does not divide the data-parallel size {self.data_parallel_size}: each DWM "
                    "rank serves an equal share of the data-parallel replicas"]
        return []
