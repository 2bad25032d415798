"""Data: tokenizers, the training blend with domain ids, the DWM validation set, micro batches.

What the training loop calls::

    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
    data = build_train_valid_test_datasets(args.data_path, args.split, args.seq_length, args.seed,
                                           tokenizer, args.data_cache_path, (train, valid, test))
    loader = build_pretraining_data_loader(data.train, consumed, micro_batch, dp_rank, dp_size)
    valid_set = ContextTargetDataset(args.dwm_valid_data_path, args.seq_length)
    valid_loader = build_pretraining_data_loader(valid_set, consumed_valid, micro_batch, dp_rank, dp_size,
                                                 cyclic=True)   # wraps around
    batch = get_batch(iter_or_none, device)   # broadcast inside the tensor-parallel group
"""

from megatron_dwm.data.batches import collate_samples, context_parallel_share, get_batch
from megatron_dwm.data.context_target_reader import ContextTargetDataset
from megatron_dwm.data.datasets import (
    DomainGPTDataset,
    TrainValidTestDatasets,
    build_train_valid_test_datasets,
    domain_name,
    parse_data_path,
)
from megatron_dwm.data.loaders import CyclicBatchSampler, build_pretraining_data_loader
from megatron_dwm.data.tokenizer import (
    TOKENIZER_TYPES,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    TextTokenizer,
    build_tokenizer,
)

__all__ = [
    "TOKENIZER_TYPES",
    "ContextTargetDataset",
    "CyclicBatchSampler",
    "DomainGPTDataset",
    "HuggingFaceTokenizer",
    "SentencePieceTokenizer",
    "TextTokenizer",
    "TrainValidTestDatasets",
    "build_pretraining_data_loader",
    "build_tokenizer",
    "build_train_valid_test_datasets",
    "collate_samples",
    "context_parallel_share",
    "domain_name",
    "get_batch",
    "parse_data_path",
]
