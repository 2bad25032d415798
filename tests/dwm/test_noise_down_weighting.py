"""The controlled noise test: when a quarter of the samples are token-shuffled noise, the DWM learns
from the hypergradient alone to give them a mean weight below 0.5 and below every clean domain.

The set-up (docs/dwm.md, "The controlled noise test"): three clean domains that are equally hard
(one Markov chain, each on its own band of the vocabulary) and a noise domain whose tokens are
drawn at random from the whole corpus, in equal shares; the DWM's encoder is initialised from a
small LM trained on the clean domains (`--dwm-init`), its weights are clipped to [0, 1.5], and
each outer step's validation batch holds the three domains in equal numbers."""

from __future__ import annotations

from megatron_dwm.analysis.dwm_run import load_samples, stage_domain_means
from tests.training.corpus import make_corpus
from tests.training.launch import run_job

ITERATIONS = 200
FINAL_WINDOW = 20  # "after training": the weights the DWM gave in the last iterations (logged every one)
ENCODER = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "4"]


def _flags(corpus: dict, data_path: list[str], *extra: str) -> list[str]:
    return ["--model-preset", "tiny", "--seq-length", "64", "--micro-batch-size", "8", "--global-batch-size", "16",
            "--lr", "3e-3", "--lr-warmup-iters", "5", "--lr-decay-style", "constant", "--log-interval", "1",
            "--eval-interval", "1000", "--eval-iters", "0", "--num-workers", "0", "--seed", "7",
            "--data-path", *data_path, "--split", "100,0,0", "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", str(corpus["tokenizer"]), *extra]


def test_dwm_down_weights_token_shuffled_noise(tmp_path):
    corpus = make_corpus(str(tmp_path / "corpus"), noise_weight=0.25, clean_weights=(1, 1, 1), shared_chain=True)
    clean_data = corpus["data_path"][:6]
    run_job(_flags(corpus, clean_data, *ENCODER, "--dwm-disable", "--train-iters", "150",
                   "--save", str(tmp_path / "encoder"), "--save-interval", "150"), 1, tmp_path / "encoder-logs")

    run_dir = tmp_path / "dwm"
    run_job(_flags(corpus, corpus["data_path"], "--train-iters", str(ITERATIONS),
                   "--dwm-init", str(tmp_path / "encoder"), "--dwm-valid-data-path", str(corpus["valid"]),
                   "--dwm-valid-batch-size", "24",  # the valid set interleaves the 3 domains: 8 of each
                   "--dwm-stages", "1", "--dwm-update-iters", str(ITERATIONS), "--dwm-lr", "3e-3",
                   "--dwm-seq-length", "32", "--dwm-weight-clip", "0", "1.5",
                   "--metrics-file", str(run_dir / "metrics.jsonl")), 1, tmp_path / "dwm-logs", timeout=600)

    final = [batch for batch in load_samples(run_dir / "dwm_samples.jsonl")
             if batch.iteration > ITERATIONS - FINAL_WINDOW]
    assert len(final) == FINAL_WINDOW
    (by_domain,) = stage_domain_means(final).values()  # one stage
    means = {domain: mean for domain, (mean, _) in by_domain.items()}
    noise = means.pop("Noise")
    assert len(means) == 3, means
    assert noise < 0.5, f"noise weight {noise:.3f}; clean domains {means}"
    assert all(noise < clean for clean in means.values()), f"noise weight {noise:.3f}; clean domains {means}"
