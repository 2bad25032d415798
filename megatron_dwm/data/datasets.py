"""The training blend: megatron-core's ``BlendedMegatronDatasetBuilder`` over ``GPTDataset``s.

``--data-path`` takes Megatron's syntax (``w1 prefix1 w2 prefix2 ...`` or just prefixes);
``--per-split-data-args-path`` a JSON file ``{"train": [...], "valid": [...], "test": [...]}``
of such lists. A sample's domain id is the index of its prefix in the blend (megatron-core's
``dataset_id``); its document id is the document, within that prefix's indexed dataset, that the
sample starts in.

megatron-core caches each dataset's document, sample and shuffle indices under a name hashed from
its configuration (``--data-cache-path``, default next to the data). That configuration here also
holds the identity of every prefix's files (:func:`dataset_identity`), so re-preprocessed data
gets new indices instead of the cached ones of the old files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import get_blend_from_list

from megatron_dwm.data.integrity import dataset_identity, indexed_problem
from megatron_dwm.data.tokenizer import TextTokenizer

Blend = tuple[list[str], Optional[list[float]]]


@dataclass
class DomainGPTDatasetConfig(GPTDatasetConfig):
    """megatron-core's GPTDatasetConfig plus the identity of every prefix's files."""

    data_identities: dict[str, str] = field(default_factory=dict)  # prefix -> dataset_identity(prefix)


class DomainGPTDataset(GPTDataset):
    """megatron-core's GPTDataset; each sample also carries ``document_id``. Its cached indices are
    keyed on the identity of the data's files as well as on megatron-core's own attributes."""

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return [*GPTDataset._key_config_attributes(), "data_identities"]

    def __getitem__(self, idx: Optional[int]) -> dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)  # also loads lazily mapped indices
        document_id = -1
        if idx is not None:
            first_document, _offset = self.sample_index[self.shuffle_index[idx]]
            document_id = int(self.document_index[first_document])
        sample["document_id"] = torch.tensor(document_id, dtype=torch.long)
        return sample


@dataclass
class TrainValidTestDatasets:
    train: Optional[torch.utils.data.Dataset]
    valid: Optional[torch.utils.data.Dataset]
    test: Optional[torch.utils.data.Dataset]
    domains: list[str]  # domain id -> name, from the train blend's prefixes


def parse_data_path(data_path: Sequence[str]) -> Blend:
    """Megatron's ``--data-path`` list -> (prefixes, weights or None); checks every prefix's files
    exist (FileNotFoundError) and belong together (ValueError)."""
    blend = get_blend_from_list(list(data_path))
    if blend is None or not blend[0]:
        raise ValueError("--data-path is empty")
    prefixes, weights = blend
    if weights is not None and any(w <= 0 for w in weights):
        raise ValueError(f"--data-path weights must be positive, got {weights}")
    for prefix in prefixes:
        if not IndexedDataset.exists(prefix):
            raise FileNotFoundError(f"--data-path: no {prefix}.bin/.idx")
        problem = indexed_problem(prefix)
        if problem:
            raise ValueError(f"--data-path: {problem}")
    return prefixes, weights


def load_per_split_data_args(path: str) -> list[Optional[Blend]]:
    """``--per-split-data-args-path``: JSON with "train", "valid", "test" lists in --data-path syntax."""
    with open(path, encoding="utf-8") as file:
        per_split = json.load(file)
    unknown = set(per_split) - {"train", "valid", "test"}
    if unknown:
        raise ValueError(f"--per-split-data-args-path {path}: unknown keys {sorted(unknown)}")
    return [parse_data_path(per_split[key]) if per_split.get(key) else None for key in ("train", "valid", "test")]


def domain_name(prefix: str) -> str:
    """``out/RedPajamaC4_text_document`` -> ``RedPajamaC4``."""
    name = os.path.basename(prefix)
    for suffix in ("_text_document", "_document"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def default_is_built_on_rank() -> bool:
    """Build datasets on tensor-parallel rank 0 (the others receive batches by broadcast)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return True
    return parallel_state.get_tensor_model_parallel_rank() == 0


def build_train_valid_test_datasets(
    data_path: Optional[Sequence[str]],
    split: Optional[str],
    seq_length: int,
    seed: int,
    tokenizer: TextTokenizer,
    cache_dir: Optional[str],
    samples: tuple[Optional[int], Optional[int], Optional[int]],
    per_split_data_args_path: Optional[str] = None,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
    eod_mask_loss: bool = False,
    create_attention_mask: bool = False,
    num_dataset_builder_threads: int = 1,
    is_built_on_rank: Callable[[], bool] = default_is_built_on_rank,
) -> TrainValidTestDatasets:
    """Build the train/valid/test datasets of ``samples`` samples each (None: one epoch).

    Exactly one of ``data_path`` (with ``split``, e.g. "969,30,1") and
    ``per_split_data_args_path`` is used. Index caches go to ``cache_dir``. Must be called on all
    ranks; ranks where ``is_built_on_rank()`` is false get ``None`` datasets.
    """
    if (data_path is None) == (per_split_data_args_path is None):
        raise ValueError("give exactly one of --data-path and --per-split-data-args-path")
    blend, blend_per_split = None, None
    if data_path is not None:
        blend = parse_data_path(data_path)
        train_prefixes = blend[0]
    else:
        blend_per_split = load_per_split_data_args(per_split_data_args_path)
        split = None
        train_prefixes = blend_per_split[0][0] if blend_per_split[0] else []
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    config = DomainGPTDatasetConfig(
        data_identities=data_identities(blend, blend_per_split),
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=create_attention_mask,
        num_dataset_builder_threads=num_dataset_builder_threads,
    )
    if config.split_matrix is not None:
        _skip_unused_splits(config, samples)
        _check_splits_have_documents(config.split_matrix, blend[0], split)
    train, valid, test = BlendedMegatronDatasetBuilder(
        DomainGPTDataset, list(samples), is_built_on_rank, config
    ).build()
    return TrainValidTestDatasets(train, valid, test, [domain_name(p) for p in train_prefixes])


SPLIT_NAMES = ("train", "valid", "test")


def data_identities(blend: Optional[Blend], blend_per_split: Optional[list[Optional[Blend]]]) -> dict[str, str]:
    """prefix -> identity of its files, for every prefix of the blend(s), as global rank 0 sees them.

    Every rank keys the cache on rank 0's view, the one whose indices megatron-core builds (rank 0
    builds, the others load), even where nodes hold copies of the data with other timestamps."""
    prefixes = sorted({p for b in [blend, *(blend_per_split or [])] if b for p in b[0]})
    identities = {prefix: dataset_identity(prefix) for prefix in prefixes}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [identities]
        torch.distributed.broadcast_object_list(shared, src=0)
        identities = shared[0]
    return identities


def _skip_unused_splits(config: GPTDatasetConfig, samples: Sequence[Optional[int]]) -> None:
    """Splits asked for 0 samples are not built at all (their share of documents stays unused)."""
    config.split_matrix = [None if count == 0 else bounds for count, bounds in zip(samples, config.split_matrix)]


def _check_splits_have_documents(split_matrix, prefixes: Sequence[str], split: str) -> None:
    """megatron-core cannot build a split that holds no document of a prefix (it never finishes)."""
    for prefix in prefixes:
        documents = len(IndexedDataset(prefix).document_indices) - 1
        for name, bounds in zip(SPLIT_NAMES, split_matrix):
            if bounds is not None and round(bounds[0] * documents) == round(bounds[1] * documents):
                raise ValueError(
                    f"--split {split} leaves the {name} split no document of {prefix} ({documents} documents); "
                    f"give the {name} split a larger share or use more data"
                )
