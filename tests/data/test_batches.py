import torch

from megatron_dwm.data.batches import collate_samples, get_batch
from tests.distributed import run_distributed


def _sample(i: int, with_mask: bool, **extra) -> dict:
    sample = {
        "tokens": torch.arange(6) + 10 * i,
        "labels": torch.arange(1, 7) + 10 * i,
        "loss_mask": torch.tensor([1.0, 1, 1, 0, 1, 1]),
        "position_ids": torch.arange(6),
        "document_id": torch.tensor(100 + i),
        **extra,
    }
    if with_mask:
        sample["attention_mask"] = torch.triu(torch.ones(1, 6, 6, dtype=torch.bool), diagonal=1)
    return sample


def test_collate_turns_dataset_id_into_domain_id():
    batch = collate_samples([_sample(0, False, dataset_id=3), _sample(1, False, dataset_id=1)])
    assert batch["domain_id"].tolist() == [3, 1] and "dataset_id" not in batch
    assert batch["tokens"].shape == (2, 6) and batch["document_id"].tolist() == [100, 101]
    assert collate_samples([_sample(0, False)])["domain_id"].tolist() == [0]


def _broadcast_body(rank: int, world_size: int):
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    batches = [  # the second batch also has an attention mask
        collate_samples([_sample(2 * b, b == 1, dataset_id=b), _sample(2 * b + 1, b == 1, dataset_id=0)])
        for b in range(2)
    ]
    # only the group's first rank reads data; the other passes no iterator
    iterator = iter(batches) if parallel_state.get_tensor_model_parallel_rank() == 0 else None
    cpu = torch.device("cpu")
    received = [get_batch(iterator, cpu), get_batch(iterator, cpu)]
    try:
        get_batch(iterator, cpu)
        stopped = False
    except StopIteration:
        stopped = True
    return batches, received, stopped


def test_get_batch_broadcasts_inside_the_tensor_parallel_group():
    results = run_distributed(_broadcast_body, world_size=2, timeout=180)
    expected = results[0][0]
    for _batches, received, stopped in results:
        assert stopped  # both ranks see the end of the data together
        for want, got in zip(expected, received):
            assert set(got) == set(want)
            for key in want:
                assert got[key].dtype == want[key].dtype
                assert torch.equal(got[key], want[key]), key
    assert results[1][1][0]["domain_id"].tolist() == [0, 0] and results[1][1][1]["domain_id"].tolist() == [1, 0]
