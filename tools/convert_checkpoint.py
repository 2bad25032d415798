#!/usr/bin/env python3
"""Convert between a Hugging Face Llama directory and a megatron-dwm (megatron-core) checkpoint.

    python tools/convert_checkpoint.py hf-to-megatron --load-dir HF_DIR --save-dir CKPT_DIR
    python tools/convert_checkpoint.py megatron-to-hf --load-dir CKPT_DIR --save-dir HF_DIR

The megatron side is a megatron-core distributed checkpoint (Megatron-LM layout, tracker file
`latest_checkpointed_iteration.txt`). It is independent of the parallel layout: the converter
writes it from one process, and training loads it at any --tensor-model-parallel-size /
--pipeline-model-parallel-size (megatron-core reshards on load); converting back reads a
checkpoint saved at any TP/PP. The Hugging Face side is `config.json` + `*.safetensors`.
The whole model is held in CPU memory once (about 4 bytes per parameter in fp32, 2 in bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_dwm.model.hf_conversion import (  # noqa: E402
    arch_from_hf_config,
    hf_config_from_arch,
    hf_to_megatron,
    megatron_to_hf,
)
from megatron_dwm.model.presets import LlamaArch  # noqa: E402

HF_SPECIAL_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", *TOKENIZER_CONFIGS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    to_mc = sub.add_parser("hf-to-megatron", help="Hugging Face Llama directory -> megatron-core checkpoint")
    to_mc.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                       help="pad the vocabulary to a multiple of this x --target-tensor-parallel-size (as Megatron-LM)")
    to_mc.add_argument("--target-tensor-parallel-size", type=int, default=1,
                       help="largest TP size the padded vocabulary must suit (the checkpoint loads at any TP dividing it)")
    to_hf = sub.add_parser("megatron-to-hf", help="megatron-core checkpoint -> Hugging Face Llama directory")
    to_hf.add_argument("--tokenizer-model", default=None,
                       help="tokenizer to copy into the export: a tokenizer.model or tokenizer.json file (with "
                            "the tokenizer_config.json / special_tokens_map.json beside it), or a directory of them")
    for p in (to_mc, to_hf):
        p.add_argument("--load-dir", required=True, help="directory to read")
        p.add_argument("--save-dir", required=True, help="directory to write (created; must not exist or be empty)")
        p.add_argument("--bf16", action="store_true", help="write bf16 weights (default: fp32)")
    args = parser.parse_args(argv)
    problems = []
    load, save = Path(args.load_dir), Path(args.save_dir)
    if not load.is_dir():
        problems.append(f"--load-dir {load}: no such directory")
    elif args.direction == "hf-to-megatron":
        problems += hf_directory_problems(load)
    else:
        problems += megatron_checkpoint_problems(load)
    for flag in ("make_vocab_size_divisible_by", "target_tensor_parallel_size"):
        if getattr(args, flag, 1) < 1:
            problems.append(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
    if save.exists() and any(save.iterdir()):
        problems.append(f"--save-dir {save}: exists and is not empty (refusing to overwrite)")
    if args.direction == "megatron-to-hf" and args.tokenizer_model:
        if not Path(args.tokenizer_model).exists():
            problems.append(f"--tokenizer-model {args.tokenizer_model}: no such file")
        elif Path(args.tokenizer_model).is_dir() and not {"tokenizer.model", "tokenizer.json"} & {
                f.name for f in tokenizer_files(args.tokenizer_model)}:
            problems.append(f"--tokenizer-model {args.tokenizer_model}: no tokenizer.model or tokenizer.json in it")
    if problems:
        parser.error("; ".join(problems))
    return args


def hf_directory_problems(load: Path) -> list[str]:
    """Why `load` is not a Hugging Face Llama directory the converter can read ([] if it is)."""
    config = load / "config.json"
    if not config.is_file():
        return [f"--load-dir {load}: no config.json (expected a Hugging Face Llama directory)"]
    if not list(load.glob("*.safetensors")):
        return [f"--load-dir {load}: no *.safetensors weights"]
    try:
        arch_from_hf_config(json.loads(config.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"--load-dir {load}: {config} is not a Llama config.json the converter reads "
                f"({type(error).__name__}: {error})"]
    return []


def megatron_checkpoint_problems(load: Path) -> list[str]:
    """Why `load` is not a megatron-dwm checkpoint directory with a complete checkpoint ([] if it is)."""
    from megatron_dwm.checkpoint_layout import read_checkpoint_common

    try:
        read_checkpoint_common(load)
    except (OSError, ValueError) as error:
        return [f"--load-dir {load} is not a readable megatron-dwm checkpoint: {error}"]
    return []


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _single_process_model(arch: LlamaArch, padded_vocab: int, bf16: bool):
    """A TP=1, PP=1 megatron-core model in this process (joins a one-rank gloo world if needed)."""
    import torch.distributed as dist

    from megatron_dwm.model.provider import build_llama_model, llama_transformer_config
    from megatron_dwm.parallel import initialize_parallel

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    initialize_parallel(1, 1)
    # every weight is overwritten (by the Hugging Face tensors or the checkpoint): no random initialisation
    config = llama_transformer_config(arch, bf16=bf16, use_cpu_initialization=True, fused_kernels=False,
                                      perform_initialization=False)
    return build_llama_model(arch, config, padded_vocab, arch.max_position_embeddings)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_full_state(model, state: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {result.unexpected_keys}")


def _staging_dir(save: Path) -> Path:
    staging = save.with_name(f".{save.name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def hf_to_megatron_checkpoint(load: Path, save: Path, bf16: bool, divisible_by: int, target_tp: int) -> None:
    from megatron_dwm.model.provider import padded_vocab_size
    from megatron_dwm.training.checkpointing import RELEASE, save_checkpoint

    hf_config = json.loads((load / "config.json").read_text())
    arch = arch_from_hf_config(hf_config)
    padded = padded_vocab_size(arch.vocab_size, target_tp, divisible_by)
    model = _single_process_model(arch, padded, bf16)
    hf = read_safetensors_dir(load)
    dtype = torch.bfloat16 if bf16 else torch.float32
    _load_full_state(model, {k: v.to(dtype) for k, v in hf_to_megatron(hf, arch, padded).items()})
    tokens = {k: hf_config[k] for k in HF_SPECIAL_TOKEN_KEYS if hf_config.get(k) is not None}
    staging = _staging_dir(save)
    save_checkpoint(staging, RELEASE, model, arch, common={"hf_special_tokens": tokens})
    save.parent.mkdir(parents=True, exist_ok=True)
    if save.exists():
        save.rmdir()
    os.replace(staging, save)
    print(f"wrote megatron-core checkpoint {save} ({arch.num_layers} layers, vocab {arch.vocab_size} padded to {padded})")


def tokenizer_files(tokenizer_model: str | None) -> list[Path]:
    """The files to export for --tokenizer-model: the file itself (or the tokenizer files in a
    directory) and the Hugging Face tokenizer configs beside it, which carry the special tokens."""
    if not tokenizer_model:
        return []
    path = Path(tokenizer_model)
    folder = path if path.is_dir() else path.parent
    names = TOKENIZER_FILES if path.is_dir() else (path.name, *TOKENIZER_CONFIGS)
    return [folder / name for name in dict.fromkeys(names) if (folder / name).is_file()]


def export_tokenizer(tokenizer_model: str | None, directory: Path) -> None:
    """Copy the tokenizer under the names transformers looks for (tokenizer.model / tokenizer.json);
    a SentencePiece model without a tokenizer_config.json gets one naming its special tokens (no
    BOS added, as in training)."""
    for file in tokenizer_files(tokenizer_model):
        name = file.name
        if file.suffix == ".model":
            name = "tokenizer.model"
        elif file.suffix == ".json" and file.name not in TOKENIZER_CONFIGS:
            name = "tokenizer.json"
        shutil.copy(file, directory / name)
    if (directory / "tokenizer.model").is_file() and not (directory / "tokenizer_config.json").is_file():
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False}
        for key, token_id in (("bos_token", processor.bos_id()), ("eos_token", processor.eos_id()),
                              ("unk_token", processor.unk_id()), ("pad_token", processor.pad_id())):
            if token_id >= 0:
                config[key] = processor.id_to_piece(token_id)
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def megatron_to_hf_checkpoint(load: Path, save: Path, bf16: bool, tokenizer_model: str | None) -> None:
    from safetensors.torch import save_file

    from megatron_dwm.training.checkpointing import load_checkpoint, read_checkpoint_common

    common = read_checkpoint_common(load)
    arch = LlamaArch(**common["arch"])
    model = _single_process_model(arch, common["padded_vocab_size"], bf16)
    load_checkpoint(load, model)
    full = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    hf = megatron_to_hf(full, arch, arch.vocab_size)
    if not arch.untie_embeddings_and_output_weights:
        hf.pop("lm_head.weight", None)
    dtype = torch.bfloat16 if bf16 else torch.float32
    staging = _staging_dir(save)
    staging.mkdir(parents=True)
    save_file({k: v.to(dtype).contiguous() for k, v in hf.items()}, str(staging / "model.safetensors"),
              metadata={"format": "pt"})
    config = hf_config_from_arch(arch, arch.vocab_size, "bfloat16" if bf16 else "float32",
                                 common.get("hf_special_tokens"))
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    export_tokenizer(tokenizer_model, staging)
    save.parent.mkdir(parents=True, exist_ok=True)
    if save.exists():
        save.rmdir()
    os.replace(staging, save)
    print(f"wrote Hugging Face Llama directory {save}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load, save = Path(args.load_dir), Path(args.save_dir)
    if args.direction == "hf-to-megatron":
        hf_to_megatron_checkpoint(load, save, args.bf16, args.make_vocab_size_divisible_by,
                                  args.target_tensor_parallel_size)
    else:
        megatron_to_hf_checkpoint(load, save, args.bf16, args.tokenizer_model)


if __name__ == "__main__":
    main()
