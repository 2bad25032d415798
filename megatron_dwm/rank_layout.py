"""How the world's ranks are split between the LLM and the DWM: plain arithmetic, importable
without torch or megatron-core (argument checks use it before anything heavy is loaded).
``megatron_dwm.parallel`` builds the process groups from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankLayout:
    """How the world's ranks are split between the LLM and the DWM: the LLM's ranks are
    TP x CP x PP x DP (Megatron-LM's order), the DWM's the last `dwm_ranks` of the world."""

    world_size: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    dwm_ranks: int = 0
    context_parallel_size: int = 1

    @property
    def llm_world_size(self) -> int:
        return self.world_size - self.dwm_ranks

    @property
    def model_parallel_size(self) -> int:
        """TP x PP: the ranks that hold one copy of the model (megatron-core's model-parallel group)."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size

    @property
    def replica_size(self) -> int:
        """TP x CP x PP: the ranks of one data-parallel replica (CP ranks share its samples' tokens)."""
        return self.model_parallel_size * self.context_parallel_size

    @property
    def data_parallel_size(self) -> int:
        return self.llm_world_size // self.replica_size

    def is_llm_rank(self, rank: int) -> bool:
        return rank < self.llm_world_size

    def problems(self) -> list[str]:
        """Everything wrong with this layout, as messages naming the flags at fault."""
        tp, pp, a = self.tensor_model_parallel_size, self.pipeline_model_parallel_size, self.dwm_ranks
        cp = self.context_parallel_size
        if tp < 1 or pp < 1 or cp < 1:
            return [f"--tensor-model-parallel-size ({tp}), --context-parallel-size ({cp}) and "
                    f"--pipeline-model-parallel-size ({pp}) must be >= 1"]
        if a < 0:
            return [f"--dwm-ranks ({a}) must be >= 0"]
        if self.llm_world_size < 1:
            return [f"--dwm-ranks {a} leaves no LLM rank in a world of {self.world_size}"]
        if self.llm_world_size % self.replica_size:
            where = f"world size {self.world_size}" + (f" minus --dwm-ranks {a}" if a else "")
            sizes = [f"--tensor-model-parallel-size {tp}", *([f"--context-parallel-size {cp}"] if cp > 1 else []),
                     f"--pipeline-model-parallel-size {pp}"]
            return [f"{where} = {self.llm_world_size} LLM ranks is not divisible by {' x '.join(sizes)} = "
                    f"{self.replica_size}"]
        if a and cp > 1:
            return [f"--dwm-ranks {a} with --context-parallel-size {cp}: not supported yet (the DWM ranks serve "
                    "one last-stage rank per data-parallel replica; use --dwm-ranks 0)"]
        if a > 1 and self.data_parallel_size % a:
            return [f"--dwm-ranks {a} does not divide the data-parallel size {self.data_parallel_size}: each DWM "
                    "rank serves an equal share of the data-parallel replicas"]
        return []
