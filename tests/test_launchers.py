"""The launchers of examples/: every dry run prints a command that pretrain_dwm.py (or the
preprocessing tool) accepts, with a world size that fits the parallel layout; the SLURM scripts
requeue themselves after a pre-emption; the Dockerfile and the scripts pass hadolint and shellcheck.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from megatron_dwm.arguments import ConfigError, parse_args
from megatron_dwm.data.indexed_writer import AtomicIndexedWriter
from megatron_dwm.parallel import RankLayout

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
VENV_BIN = Path(sys.executable).parent
TRAIN_LAUNCHERS = sorted(EXAMPLES.glob("pretrain_*.sh"))
SLURM_LAUNCHERS = sorted((EXAMPLES / "slurm").glob("*.sbatch"))
SCRIPTS = sorted([*EXAMPLES.rglob("*.sh"), *EXAMPLES.rglob("*.sbatch")])
DOMAINS = ["RedPajamaC4", "RedPajamaCommonCrawl", "RedPajamaGithub", "RedPajamaBook", "RedPajamaArXiv",
           "RedPajamaWikipedia", "RedPajamaStackExchange"]
GPUS_PER_NODE = 8  # the launchers' default


def _indexed(prefix: Path) -> str:
    """A one-document indexed dataset at `prefix` (the start-up check reads its .idx and .bin)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    writer = AtomicIndexedWriter(str(prefix), vocab_size=32000)
    writer.add_document([numpy.arange(8, dtype=numpy.int32)])
    writer.commit()
    return str(prefix)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Placeholder data prefixes, a small SentencePiece model (the flag checks load it) and a DWM
    checkpoint directory: enough for the flag checks."""
    from megatron_dwm.data.tokenizer_training import train_sentencepiece

    root = tmp_path_factory.mktemp("launch")
    for domain in DOMAINS:
        _indexed(root / "slimpajama" / f"{domain}_text_document")
    texts = [f"launch number {i}: the quick brown fox jumps over the lazy dog" for i in range(200)]
    tokenizer = train_sentencepiece(texts, str(root / "tokenizer"), vocab_size=320, num_threads=1)
    (root / "dwm-checkpoint").mkdir()
    return {
        "DATA_DIR": str(root / "slimpajama"),
        "LAMBADA_PATH": _indexed(root / "lambada" / "lambada_text_document"),
        "SELECTED_DATA_PATH": _indexed(root / "selected" / "dsir_text_document"),
        "TOKENIZER_MODEL": str(tokenizer),
        "DWM_CHECKPOINT": str(root / "dwm-checkpoint"),
        "OUTPUT_DIR": str(root / "run"),
    }


def _run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # A clean environment: no SLURM_* or torchrun variables of the machine running the tests.
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["bash", str(script), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=30)


def dry_run(script: Path, env: dict[str, str], *args: str) -> list[str]:
    result = _run(script, {**env, "DRY_RUN": "1"}, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"{script.name}: the dry run should print one line, got {result.stdout!r}"
    return shlex.split(lines[0])


def split_at_entry(command: list[str], entry: str = "pretrain_dwm.py") -> tuple[list[str], list[str]]:
    """(launcher and its options, the entry point's arguments)."""
    index = next(i for i, word in enumerate(command) if Path(word).name == entry)
    assert Path(command[index]).parent == REPO / ("tools" if entry.startswith("preprocess") else "")
    return command[:index], command[index + 1:]


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def sbatch_header(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script.read_text(), re.MULTILINE))


def accepted(argv: list[str], world_size: int):
    try:
        return parse_args(argv, world_size=world_size)
    except ConfigError as error:
        pytest.fail(f"pretrain_dwm.py refuses the launch (world size {world_size}): {error}")


@pytest.mark.parametrize("script", TRAIN_LAUNCHERS, ids=lambda p: p.name)
def test_torchrun_launch_is_accepted(script, inputs):
    launcher, argv = split_at_entry(dry_run(script, inputs))
    assert launcher[0] == "torchrun"
    nproc, nnodes = int(option(launcher, "--nproc-per-node")), int(option(launcher, "--nnodes"))
    assert nnodes == 1  # the default; the extra DWM processes are on the last node
    args = accepted(argv, world_size=nproc)
    assert nproc == GPUS_PER_NODE + args.dwm_ranks
    layout = RankLayout(nproc, args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.dwm_ranks)
    assert layout.problems() == []
    assert args.global_batch_size % (args.micro_batch_size * layout.data_parallel_size) == 0
    assert args.exit_signal_handler and args.save == args.load and args.bf16 and args.seq_length == 2048
    assert args.dwm_valid_data_path == inputs["LAMBADA_PATH"]


@pytest.mark.parametrize("script", SLURM_LAUNCHERS, ids=lambda p: p.name)
def test_slurm_launch_is_accepted_and_matches_its_torchrun_launcher(script, inputs):
    srun, argv = split_at_entry(dry_run(script, inputs))
    assert srun[0] == "srun" and "torchrun" not in srun
    header = sbatch_header(script)
    assert {"nodes", "ntasks-per-node", "gpus-per-node", "time", "signal", "output"} <= set(header)
    assert header["signal"] == "USR1@120" and "#SBATCH --requeue" in script.read_text()
    nodes, ntasks = int(option(srun, "--nodes")), int(option(srun, "--ntasks"))
    assert nodes == int(header["nodes"]) and ntasks == nodes * int(header["ntasks-per-node"])
    args = accepted(argv, world_size=ntasks)
    assert ntasks == nodes * int(header["gpus-per-node"]) + args.dwm_ranks  # one task per GPU, plus the DWM's
    assert RankLayout(ntasks, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                      args.dwm_ranks).problems() == []
    assert args.exit_signal_handler and args.save == args.load

    torchrun_twin = EXAMPLES / script.with_suffix(".sh").name
    assert split_at_entry(dry_run(torchrun_twin, inputs))[1] == argv


def test_slurm_container_and_environment_overrides(inputs):
    script = EXAMPLES / "slurm" / "pretrain_llama2_370m_uniform.sbatch"
    srun, argv = split_at_entry(dry_run(script, {**inputs, "CONTAINER_IMAGE": "megatron-dwm.sqsh",
                                                 "TRAIN_ITERS": "500"}, "--log-interval", "1"))
    assert option(srun, "--container-image") == "megatron-dwm.sqsh"
    assert f"{REPO}:{REPO}" in option(srun, "--container-mounts").split(",")
    assert option(argv, "--train-iters") == "500" and argv[-2:] == ["--log-interval", "1"]


@pytest.mark.parametrize("node_rank,nproc", [(0, GPUS_PER_NODE), (1, GPUS_PER_NODE + 1)])
def test_dwm_process_is_added_on_the_last_node(inputs, node_rank, nproc):
    launcher, _ = split_at_entry(dry_run(EXAMPLES / "pretrain_llama2_370m_dwm.sh",
                                         {**inputs, "NNODES": "2", "NODE_RANK": str(node_rank)}))
    assert int(option(launcher, "--nproc-per-node")) == nproc


@pytest.fixture
def fake_slurm(tmp_path) -> tuple[dict[str, str], Path]:
    """srun writes the checkpoint tracker (FAKE_ITERATION) and exits FAKE_RC; scontrol logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nmkdir -p "$CHECKPOINT_DIR"\n'
                                  'echo "$FAKE_ITERATION" > "$CHECKPOINT_DIR/latest_checkpointed_iteration.txt"\n'
                                  'exit "$FAKE_RC"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/scontrol.log\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "TRAIN_ITERS": "1000",
           "CHECKPOINT_DIR": str(tmp_path / "checkpoints"), "OUTPUT_DIR": str(tmp_path / "run")}
    return env, tmp_path / "scontrol.log"


@pytest.mark.parametrize("iteration,rc,requeued", [
    (600, 0, True),      # saved on SIGUSR1 and exited 0 before the end: requeue
    (1000, 0, False),    # finished
    (600, 1, False),     # failed: no requeue, the exit code is kept
])
def test_slurm_script_requeues_until_train_iters(fake_slurm, iteration, rc, requeued):
    env, scontrol_log = fake_slurm
    result = _run(EXAMPLES / "slurm" / "pretrain_llama2_370m_uniform.sbatch",
                  {**env, "FAKE_ITERATION": str(iteration), "FAKE_RC": str(rc)})
    assert result.returncode == rc, result.stderr
    log = scontrol_log.read_text() if scontrol_log.exists() else ""
    assert log == ("requeue 42\n" if requeued else "")


def _tool_parser(name: str):
    spec = importlib.util.spec_from_file_location(f"_launch_test_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_preprocess_slimpajama_dry_run(inputs):
    _, argv = split_at_entry(dry_run(EXAMPLES / "preprocess_slimpajama.sh",
                                     {**inputs, "SLIMPAJAMA_DIR": "/data/SlimPajama-627B"}), "preprocess_data.py")
    args = _tool_parser("preprocess_data").parse_args(argv)
    assert args.input == ["/data/SlimPajama-627B/train/chunk*/example_train_*.jsonl.zst"]
    assert args.split_by_domain and args.append_eod and args.output_prefix == inputs["DATA_DIR"]


def test_preprocess_lambada_dry_run(inputs):
    _, argv = split_at_entry(dry_run(EXAMPLES / "preprocess_lambada.sh", inputs), "preprocess_lambada.py")
    args = _tool_parser("preprocess_lambada").parse_args(argv)
    # the launchers' default LAMBADA_PATH is this output prefix + _text_document
    assert args.output_prefix + "_text_document" == "/data/lambada/lambada_text_document"


def _linter(name: str) -> Path:
    path = VENV_BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {VENV_BIN} (pip install -e '.[dev]' installs it)")
    return path


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_linter("hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_pass_shellcheck():
    assert len(SCRIPTS) == 12
    result = subprocess.run([_linter("shellcheck"), "-s", "bash", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dwm_launcher_trains_on_cpu_with_its_dwm_rank(corpus, tmp_path):
    """The 370M DWM launcher as written (bf16, the DWM on one extra rank, save and load), shrunk
    through its environment variables and extra arguments to the tiny model on the test corpus:
    one training rank and one DWM rank train, checkpoint and end cleanly."""
    from tests.distributed import free_port, port_taken

    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", GPUS_PER_NODE="1", DWM_RANKS="1",
               OUTPUT_DIR=str(tmp_path / "run"), SEQ_LENGTH="64",
               MICRO_BATCH_SIZE="2", GLOBAL_BATCH_SIZE="4", TRAIN_ITERS="4", LR_WARMUP_ITERS="1", DWM_STAGES="2",
               TOKENIZER_MODEL=str(corpus["tokenizer"]), LAMBADA_PATH=str(corpus["valid"]), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    for _ in range(3):  # torchrun stops at once, before any rank starts, if the port was taken meanwhile
        result = subprocess.run(
            ["bash", str(EXAMPLES / "pretrain_llama2_370m_dwm.sh"), "--model-preset", "tiny",
             "--data-path", *corpus["data_path"], "--split", "90,10,0", "--tokenizer-type", "HuggingFaceTokenizer",
             "--dwm-seq-length", "32", "--dwm-hidden-size", "32", "--eval-iters", "1", "--log-interval", "1"],
            cwd=tmp_path, env=dict(env, MASTER_PORT=str(free_port())), capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        if result.returncode == 0 or not port_taken(output):
            break
    assert result.returncode == 0, output[-6000:]
    assert "DWM rank 1: serving data-parallel replicas 0..0 of 1" in output
    assert (tmp_path / "run" / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
