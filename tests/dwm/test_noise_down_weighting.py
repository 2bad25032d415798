"""The controlled noise test: when a quarter of the samples are token-shuffled noise, the DWM learns
from the hypergradient alone to weigh them below the clean samples of their batch.

The set-up (docs/dwm.md, "The controlled noise test"): three clean domains that are equally hard
(one Markov chain, each on its own band of the vocabulary) and a noise domain whose tokens are
drawn at random from the whole corpus, in equal shares; the DWM's encoder is initialised from a
small LM trained on the clean domains (`--dwm-init`), its weights are clipped to [0, 1.5], and
each outer step's validation batch holds the three domains in equal numbers.

The weights do not settle in 200 iterations (a batch's mean noise weight moves by tenths from one
iteration to the next), and where they stand depends on the trajectory, which rounding changes
from one CPU to another as the seed does. So the test asserts what holds with a wide margin over
seeds (docs/dwm.md, "The controlled noise test"): how the DWM ranks noise against clean samples of
the same batch, and the noise's mean weight against the clean samples'; not a threshold that one
seed's end point happens to clear."""

from __future__ import annotations

import numpy as np

from megatron_dwm.analysis.run_files import SampleBatch, load_samples
from tests.training.corpus import DOMAINS, make_corpus
from tests.training.launch import run_job

ITERATIONS = 200
FINAL_WINDOW = 20  # "after training": the weights the DWM gave in the last iterations (logged every one)
# Measured over --seed 1, 2, 3, 7, 11, 13 (docs/dwm.md): noise below clean in 0.91-0.99 of the pairs,
# below each clean domain in 0.85-0.99, mean weight 0.09-0.29 of the clean samples'. A DWM that has
# not told noise apart scores 0.5, 0.5 and 1.
BELOW_CLEAN = 0.8
BELOW_EACH_CLEAN_DOMAIN = 0.7
MEAN_RATIO = 0.5
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
                   # the recipe this test was measured with (docs/dwm.md), not today's defaults
                   "--dwm-update-interval", "1", "--dwm-fd-direction", "adam", "--dwm-hypergradient-scaling", "raw",
                   "--dwm-seq-length", "32", "--dwm-weight-clip", "0", "1.5",
                   "--metrics-file", str(run_dir / "metrics.jsonl")), 1, tmp_path / "dwm-logs", timeout=600)

    final = [batch for batch in load_samples(run_dir / "dwm_samples.jsonl")
             if batch.iteration > ITERATIONS - FINAL_WINDOW]
    assert len(final) == FINAL_WINDOW
    below = {clean: _noise_below(final, {clean}) for clean in DOMAINS}
    assert _noise_below(final, set(DOMAINS)) >= BELOW_CLEAN, below
    assert all(fraction >= BELOW_EACH_CLEAN_DOMAIN for fraction in below.values()), below
    weights = np.concatenate([batch.weight for batch in final])
    domains = np.concatenate([batch.domain for batch in final])
    noise, clean = weights[domains == "Noise"].mean(), weights[domains != "Noise"].mean()
    assert noise <= MEAN_RATIO * clean, f"mean weight of noise {noise:.3f}, of clean samples {clean:.3f}"


def _noise_below(batches: list[SampleBatch], clean: set[str]) -> float:
    """The fraction of (noise sample, sample of `clean`) pairs of the same batch in which the noise
    sample has the smaller weight (a tie counts half), over `batches`."""
    below = pairs = 0.0
    for batch in batches:
        weights, domains = np.array(batch.weight), np.array(batch.domain)
        noise = weights[domains == "Noise"][:, None]
        others = weights[np.isin(domains, list(clean))][None, :]
        below += (noise < others).sum() + 0.5 * (noise == others).sum()
        pairs += noise.size * others.size
    assert pairs > 0, "no batch holds both noise and clean samples"
    return below / pairs
