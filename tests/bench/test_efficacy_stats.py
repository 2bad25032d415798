"""The efficacy lab without training: its statistics against formulas and known values, its plan of
runs, its run commands, and its report built from synthetic run records."""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from efficacy_lab import report, runner, stats  # noqa: E402
from efficacy_lab.methods import DOMAIN_ORACLE, DWM_STEP_COST, DWM_STEP_COST_H200, get_method  # noqa: E402

MS, SHARE, WEIGHT = stats.STEP_MS, stats.WEIGHT_SHARE_PREFIX, stats.WEIGHT_PREFIX


# --- Student's t and confidence intervals -----------------------------------------------------------

@pytest.mark.parametrize("df, quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_tables(df, quantile):
    assert stats.t_quantile(0.975, df) == pytest.approx(quantile, abs=5e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-quantile, abs=5e-4)


def test_t_quantile_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 3, 7, 29, 200):
        for p in (0.6, 0.9, 0.95, 0.975, 0.995):
            assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8)
            assert stats.t_cdf(scipy_stats.t.ppf(p, df), df) == pytest.approx(p, abs=1e-10)


def test_mean_ci_is_the_t_interval():
    estimate = stats.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975,4} x sd / sqrt(n)
    assert estimate.n == 5 and estimate.mean == pytest.approx(3.0)
    assert (estimate.low, estimate.high) == pytest.approx((3.0 - half, 3.0 + half), abs=1e-6)
    assert stats.mean_ci([0.25]) == stats.Estimate(0.25, None, None, 1)
    assert stats.mean_ci([]) is None


def test_paired_differences_use_the_seeds_both_have():
    method = {0: 5.0, 1: 4.0, 2: None, 3: 3.5}
    uniform = {0: 5.5, 1: 4.5, 2: 4.0}
    assert stats.paired_differences(method, uniform) == [-0.5, -0.5]


# --- curves ----------------------------------------------------------------------------------------

def test_interpolate_between_points_and_nothing_outside():
    xs, ys = [10, 20, 40], [6.0, 5.0, 4.0]
    assert stats.interpolate(xs, ys, 15) == pytest.approx(5.5)
    assert stats.interpolate(xs, ys, 30) == pytest.approx(4.5)
    assert stats.interpolate(xs, ys, 40) == 4.0
    assert stats.interpolate(xs, ys, 5) is None and stats.interpolate(xs, ys, 41) is None


def test_tokens_to_reach():
    tokens, losses = [100, 200, 300], [6.0, 5.0, 4.0]
    assert stats.tokens_to_reach(tokens, losses, 4.5) == pytest.approx(250)
    assert stats.tokens_to_reach(tokens, losses, 5.0) == pytest.approx(200)
    assert stats.tokens_to_reach(tokens, losses, 7.0) == 100  # reached by the first evaluation
    assert stats.tokens_to_reach(tokens, losses, 3.9) is None  # never


def _train(iteration: int, ms: float, **scalars: float) -> dict:
    return {"iteration": iteration, "consumed samples": 16 * iteration, MS: ms, **scalars}


def _eval(iteration: int, loss: float) -> dict:
    return {"iteration": iteration, stats.TARGET_LOSS: loss}


def test_eval_curve_and_final_loss():
    records = [_train(5, 100), _eval(5, 6.0), _train(10, 100), _eval(10, 5.0)]
    assert stats.eval_curve(records) == ([5, 10], [6.0, 5.0])
    assert stats.final_target_loss(records) == 5.0
    assert stats.final_target_loss([_train(5, 100)]) is None


def test_training_time_integrates_the_per_iteration_times():
    records = [_train(5, 100), _eval(5, 6.0), _train(10, 300)]
    assert stats.train_time_points(records) == ([0, 5, 10], pytest.approx([0.0, 0.5, 2.0]))
    assert stats.train_seconds(records) == pytest.approx(2.0)
    assert stats.mean_step_ms(records) == pytest.approx(200.0)


def test_loss_at_equal_wall_clock():
    # the method: 200 ms per iteration, evaluated at iterations 5 (1 s) and 10 (2 s)
    method = [_train(5, 200), _eval(5, 6.0), _train(10, 200), _eval(10, 5.0)]
    assert stats.loss_at_seconds(method, 1.0) == pytest.approx(6.0)
    assert stats.loss_at_seconds(method, 1.5) == pytest.approx(5.5)
    assert stats.loss_at_seconds(method, 3.0) == 5.0  # it had finished: its final loss
    assert stats.loss_at_seconds(method, 0.5) is None  # before its first evaluation
    uniform = [_train(5, 100), _eval(5, 6.2), _train(10, 100), _eval(10, 5.6)]
    assert stats.loss_at_seconds(method, stats.train_seconds(uniform)) == pytest.approx(6.0)


def test_weight_share_and_ess():
    records = [_train(5, 100, **{SHARE + "Junk": 0.3, "dwm/ess": 16.0}), _eval(5, 6.0),
               _train(10, 100, **{SHARE + "Junk": 0.1, "dwm/ess": 12.0})]
    assert stats.weight_share(records, "Junk") == pytest.approx((0.2, 0.1))
    assert stats.weight_share(records, "Book") is None
    assert stats.mean_ess(records) == pytest.approx(14.0)


def test_late_mean_weight_is_the_last_quarter_of_the_logged_means():
    records = [_train(i, 100, **{"dwm/weight/Junk": w}) for i, w in enumerate([1.0, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1])]
    assert stats.late_mean_weight(records, "Junk") == pytest.approx(0.15)  # the last 2 of 8
    assert stats.late_mean_weight(records[:3], "Junk") == pytest.approx(0.7)  # at least the last one
    assert stats.late_mean_weight(records, "Book") is None


def test_trailing_mean_skips_missing_values():
    assert stats.trailing_mean([1.0, 2.0, 3.0, 4.0], 2) == pytest.approx([1.0, 1.5, 2.5, 3.5])
    assert stats.trailing_mean([1.0, None, 3.0, None, None], 2) == [1.0, 1.0, 3.0, 3.0, None]
    assert stats.trailing_mean([2.0, 4.0], 10) == pytest.approx([2.0, 3.0])
    with pytest.raises(ValueError):
        stats.trailing_mean([1.0], 0)


def test_domain_weight_curve_smooths_over_logged_iterations():
    # Book is absent from the batches of iteration 15: that logged iteration counts in the window empty
    records = [_train(5, 100, **{WEIGHT + "Book": 1.0, WEIGHT + "Junk": 1.0}), _eval(5, 6.0),
               _train(10, 100, **{WEIGHT + "Book": 2.0, WEIGHT + "Junk": 0.5}),
               _train(15, 100, **{WEIGHT + "Junk": 0.3}), _eval(15, 5.5),
               _train(20, 100, **{WEIGHT + "Book": 4.0, WEIGHT + "Junk": 0.1})]
    assert stats.domain_weight_curve(records, "Book", window=2) == \
        ([5, 10, 15, 20], pytest.approx([1.0, 1.5, 2.0, 4.0]))
    assert stats.domain_weight_curve(records, "Junk", window=1) == ([5, 10, 15, 20], [1.0, 0.5, 0.3, 0.1])
    assert stats.domain_weight_curve(records, "Book", window=10)[1] == pytest.approx([1.0, 1.5, 1.5, 7 / 3])
    assert stats.domain_weight_curve(records, "Wiki") == ([], [])


def test_pointwise_mean_averages_the_curves_that_have_a_value():
    assert stats.pointwise_mean([([1, 2, 3], [1.0, 2.0, 3.0]), ([2, 3, 4], [4.0, 6.0, 8.0])]) == \
        ([1, 2, 3, 4], pytest.approx([1.0, 3.0, 4.5, 8.0]))
    assert stats.pointwise_mean([]) == ([], [])


# --- plan and commands ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeScenario:
    name: str
    oracle_blend: list | None
    oracle_grid: list
    harmful_domain: str | None = None
    target_domain: str | None = None
    domains: tuple = ("A", "Junk")
    target_dev_prefix: str = "/data/dev"
    target_test_tokens: int = 27_065

    def data_flags(self, blend=None) -> list[str]:
        return ["--per-split-data-args-path", f"/data/{self.name}-{'oracle' if blend else 'blend'}.json"]


JUNK = FakeScenario("junk", [[1.0, "/data/A"]], [[1.0, 0.0], [1.0, 0.5]], harmful_domain="Junk")
TARGET = FakeScenario("target", None, [[2.0, 1.0], [4.0, 1.0]], target_domain="A")


def test_lab_config_evaluates_the_whole_target_test_set_on_logged_iterations():
    config = runner.LabConfig(runner.FULL_TRAIN_ITERS)
    assert config.eval_iters(27_065) * config.tokens_per_iteration >= 27_065
    assert config.eval_iters(1_000) == config.min_eval_iters  # at least 20,480 tokens
    for train_iters in (6, 30, 100, 120, 7):
        config = runner.LabConfig(train_iters)
        assert config.eval_interval % config.log_interval == 0 and train_iters % config.log_interval == 0
        assert config.lr_warmup_iters < train_iters


def test_plan_runs_the_grid_first_and_transfer_after_its_source():
    config = runner.LabConfig(30)
    data = {"junk": JUNK, "target": TARGET}
    runs = runner.plan_runs(data, ["junk", "transfer"], ["uniform", DOMAIN_ORACLE, "data-oracle", "dwm-transfer"],
                            3, config)
    keys = [run.key for run in runs]
    grid = ["junk/domain-grid-0/seed0", "junk/domain-grid-0/seed1", "junk/domain-grid-1/seed0",
            "junk/domain-grid-1/seed1"]
    assert keys[:4] == grid
    oracle = next(run for run in runs if run.method == DOMAIN_ORACLE)
    assert oracle.key == "junk/domain-oracle/seed2" and list(oracle.requires) == grid
    assert {"junk/data-oracle/seed0", "target/dwm/seed2"} <= set(keys)  # the transfer's source is added
    assert [k for k in keys if k.startswith("transfer/")] == keys[-6:]  # transfer last
    transfer = next(run for run in runs if run.key == "transfer/dwm-transfer/seed1")
    assert transfer.requires == ("target/dwm/seed1",)
    assert not any(key.startswith("transfer/domain") or key.startswith("transfer/data") for key in keys)
    # the target scenario has no data oracle
    runs = runner.plan_runs(data, ["target"], ["uniform", "data-oracle"], 1, config)
    assert [run.key for run in runs] == ["target/uniform/seed0"]


def test_run_commands(tmp_path):
    config = runner.LabConfig(30)
    lab = runner.Lab(tmp_path, config, {"junk": JUNK, "target": TARGET}, jobs=2)

    def command(scenario: str, method: str, seed: int = 1) -> list[str]:
        return lab.command(runner.Run(scenario, method, seed))

    uniform = command("junk", "uniform")
    assert uniform[1].endswith("pretrain_dwm.py")
    assert ["--weighting", "uniform"] == uniform[uniform.index("--weighting"):uniform.index("--weighting") + 2]
    assert "--seed" in uniform and uniform[uniform.index("--seed") + 1] == str(config.base_seed + 1)
    assert "--save" not in uniform and "--dwm-valid-data-path" not in uniform
    assert "/data/junk-oracle.json" in command("junk", "data-oracle")
    grid = command("junk", "domain-grid-1")
    assert grid[grid.index("--domain-weights") + 1:grid.index("--domain-weights") + 3] == ["1", "0.5"]
    loss = command("junk", "loss-quadratic")
    assert loss[loss.index("--loss-weighting-strategy") + 1] == "quadratic"
    dwm = command("target", "dwm")
    assert dwm[dwm.index("--dwm-valid-data-path") + 1] == "/data/dev"
    assert dwm[dwm.index("--save") + 1] == str(tmp_path / "target" / "dwm" / "seed1" / "checkpoints")
    assert "--save" not in command("junk", "dwm")
    transfer = command("transfer", "dwm-transfer")
    assert transfer[transfer.index("--model-preset") + 1] == "small"
    assert transfer[transfer.index("--dwm-load") + 1] == str(tmp_path / "target" / "dwm" / "seed1" / "checkpoints")
    assert "--dwm-freeze" in transfer and "--dwm-valid-data-path" not in transfer
    with pytest.raises(ValueError, match="unknown method"):
        get_method("dwm-typo")


@pytest.mark.parametrize("name, step_cost", [("dwm-equal-time", DWM_STEP_COST),
                                              ("dwm-equal-time-h200", DWM_STEP_COST_H200)])
def test_the_equal_time_dwm_trains_for_uniforms_wall_clock(tmp_path, name, step_cost):
    """dwm-equal-time(-h200): the default DWM with the lab's iterations divided by the DWM's step cost;
    the trainer's parser takes its --train-iters (the last one given), and the whole schedule follows."""
    from megatron_dwm.arguments import build_parser

    config = runner.LabConfig(120)
    lab = runner.Lab(tmp_path, config, {"junk": JUNK, "target": TARGET}, jobs=2)
    command = lab.command(runner.Run("target", name, 0))
    iterations = round(120 / step_cost)
    parsed, _ = build_parser().parse_known_args(command[2:])
    assert parsed.train_iters == iterations < 120 and parsed.weighting == "dwm"
    assert command.count("--train-iters") == 2  # the lab's, then the method's
    method = get_method(name)
    assert method.applies("junk", JUNK) and method.applies("target", TARGET)
    assert not method.applies("duplicates", JUNK) and not method.applies("transfer", TARGET)


def _result(out: Path, scenario: str, method: str, seed: int, records: list[dict]) -> None:
    directory = runner.run_dir(out, scenario, method, seed)
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    result = {"scenario": scenario, "method": method, "seed index": seed, "seed": 1000 + seed,
              "model preset": "tiny", "final target loss": stats.final_target_loss(records),
              "tokens per iteration": 2048, "train iters": 10, "target-test tokens": 30_000, "eval iters": 15,
              "domains": ["A", "Junk"], "harmful domain": "Junk", "target domain": None, "command": []}
    (directory / runner.RESULT).write_text(json.dumps(result))


def _records(final: float, ms: float, junk_share: float) -> list[dict]:
    weights = {SHARE + "A": 1 - junk_share, SHARE + "Junk": junk_share, "dwm/weight/Junk": 2 * junk_share,
               "dwm/ess": 15.0}
    return [_train(5, ms, **weights), _eval(5, final + 1.0), _train(10, ms, **weights), _eval(10, final)]


def test_domain_oracle_is_the_grid_vector_with_the_lowest_mean_loss(tmp_path):
    for seed in (0, 1):
        _result(tmp_path, "junk", "domain-grid-0", seed, _records(5.0 + seed, 100, 0.0))
        _result(tmp_path, "junk", "domain-grid-1", seed, _records(5.2, 100, 0.15))
    assert runner.select_domain_oracle(tmp_path, "junk", JUNK.oracle_grid, 2) == "domain-grid-1"
    selection = json.loads((tmp_path / "junk" / runner.SELECTION).read_text())
    assert selection["chosen"] == 1 and selection["mean final target loss"] == pytest.approx([5.5, 5.2])


def test_domain_oracle_is_chosen_with_a_single_seed_too(tmp_path):
    _result(tmp_path, "junk", "domain-grid-0", 0, _records(5.0, 100, 0.0))
    _result(tmp_path, "junk", "domain-grid-1", 0, _records(5.2, 100, 0.15))
    lab = runner.Lab(tmp_path, runner.LabConfig(10), {"junk": JUNK}, jobs=2)
    lab.train(runner.plan_runs({"junk": JUNK}, ["junk"], [DOMAIN_ORACLE], 1, runner.LabConfig(10)))
    selection = json.loads((tmp_path / "junk" / runner.SELECTION).read_text())
    assert selection["chosen"] == 0 and selection["seeds"] == [0]


# --- the report ------------------------------------------------------------------------------------

def test_report_from_synthetic_runs(tmp_path):
    uniform_finals, dwm_finals = [5.0, 5.2, 4.9], [4.8, 5.1, 4.6]  # differences -0.2, -0.1, -0.3
    for seed in range(3):
        _result(tmp_path, "junk", "uniform", seed, _records(uniform_finals[seed], 100, 0.3))
        _result(tmp_path, "junk", "dwm", seed, _records(dwm_finals[seed], 200, 0.1))
    for seed in (0, 1):
        _result(tmp_path, "junk", "domain-grid-0", seed, _records(4.7, 100, 0.0))
        _result(tmp_path, "junk", "domain-grid-1", seed, _records(4.8, 100, 0.15))
    runner.select_domain_oracle(tmp_path, "junk", JUNK.oracle_grid, 2)
    lab = {"settings": runner.LabConfig(10).settings(), "commands": [["python", "bench/efficacy.py"]],
           "wall-clock seconds": 75.0}
    planned = [f"junk/{method}/seed{seed}" for method in ("uniform", "dwm") for seed in range(4)]
    path = report.write_report(tmp_path, lab, planned + ["junk/domain-oracle/seed2"])

    results = json.loads((tmp_path / "results.json").read_text())
    junk = results["scenarios"]["junk"]
    assert list(junk["methods"]) == ["uniform", DOMAIN_ORACLE, "dwm"]
    dwm = junk["methods"]["dwm"]
    half = 4.3026527 * 0.1 / math.sqrt(3)  # t_{0.975,2} x sd / sqrt(3)
    assert dwm["paired difference"]["mean"] == pytest.approx(-0.2)
    assert dwm["paired difference"]["low"] == pytest.approx(-0.2 - half)
    assert dwm["paired difference"]["n"] == 3
    # twice as slow: at uniform's 1 s of training the method is at its first evaluation (final + 1)
    assert dwm["equal wall-clock difference"]["mean"] == pytest.approx(0.8)
    assert dwm["step-time ratio"]["mean"] == pytest.approx(2.0)
    assert dwm["weight share"]["Junk"] == pytest.approx({"mean": 0.1, "end": 0.1})
    # uniform's curve runs from final + 1 at 10,240 tokens to final at 20,480: never as low as dwm's final
    assert dwm["uniform tokens to reach"]["median ratio"] is None
    assert dwm["uniform tokens to reach"]["seeds never reached"] == 3
    assert [entry["tokens"] for entry in dwm["paired difference at tokens"]] == [10_240, 20_480]
    assert junk["methods"][DOMAIN_ORACLE]["seeds"] == [0, 1]
    assert results["failed or missing runs"] == ["junk/uniform/seed3", "junk/dwm/seed3", "junk/domain-oracle/seed2"]
    assert len(results["runs"]) == 10

    text = path.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["method", "final target loss", "Δ vs uniform [95% CI]", "Δ at equal wall-clock [95% CI]",
                      "uniform tokens to reach", "weight share on Junk (mean / end)",
                      "Junk mean weight, last quarter (mean / highest seed)", "mean ESS", "step time × uniform", "seeds"]
    rows = {line.split("|")[1].strip().split(" (")[0]: [cell.strip() for cell in line.strip("|").split("|")]
            for line in table[2:5]}
    assert rows["dwm"][2] == f"-0.200 [{-0.2 - half:+.3f}, {-0.2 + half:+.3f}]"
    ess = "–" if dwm["mean ess"] is None else f"{dwm['mean ess']:.1f}"
    assert rows["dwm"][5:] == ["0.100 / 0.100", "0.20 / 0.20", ess, "2.00", "3"]
    assert rows["uniform"][2] == "–" and rows[DOMAIN_ORACLE][-1] == "2"
    assert rows[DOMAIN_ORACLE][0] == "domain-oracle (Junk 0)"
    assert "| Junk 0.5 | 4.8000 |  |" in text and "| Junk 0 | 4.7000 | chosen |" in text
    assert "Failed or missing runs: junk/uniform/seed3, junk/dwm/seed3, junk/domain-oracle/seed2." in text
    assert (tmp_path / "plots" / "junk-target-loss.png").stat().st_size > 0
    assert (tmp_path / "plots" / "junk-domain-weights.png").stat().st_size > 0
    text_lines = text.splitlines()
    links = [line for line in text_lines if line.startswith("![")]
    assert [line[line.index("](") + 2:-1] for line in links] == \
        ["plots/junk-difference.png", "plots/junk-target-loss.png", "plots/junk-domain-weights.png"]
    assert text_lines.index(links[0]) > text_lines.index(table[-1])  # under the table, above the loss plot
    assert (tmp_path / "plots" / "junk-difference.png").stat().st_size > 0
    assert not (tmp_path / "plots" / "junk-weight-share.png").exists()


def _weighted_records(final: float, weights: list[dict[str, float]]) -> list[dict]:
    """A run logged every 5 iterations with per-domain mean weights, evaluated at 10 and 20."""
    records = []
    for index, domain_weights in enumerate(weights):
        iteration = 5 * (index + 1)
        records.append(_train(iteration, 100, **{WEIGHT + domain: w for domain, w in domain_weights.items()}))
        if iteration % 10 == 0:
            records.append(_eval(iteration, final + (1.0 if iteration < 20 else 0.0)))
    return records


def test_domain_weight_series_is_smoothed_then_averaged_over_seeds(tmp_path):
    seeds = {seed: report.RunData({"tokens per iteration": 2048, "domains": ["A", "Junk"]},
                                  _weighted_records(5.0, [{"A": 1.0 + seed, "Junk": 0.5}, {"A": 3.0 + seed},
                                                          {"A": 1.0, "Junk": 0.1}, {"A": 1.0, "Junk": 0.1}]))
             for seed in (0, 1)}
    tokens, weights = report.domain_weight_series(seeds, "A", window=2)
    assert tokens == [10_240, 20_480, 30_720, 40_960]
    # seed 0: 1, 2, 2, 1; seed 1: 2, 3, 2.5, 1
    assert weights == pytest.approx([1.5, 2.5, 2.25, 1.0])
    # Junk is missing at the second logged iteration: the window holds the first only
    assert report.domain_weight_series(seeds, "Junk", window=2)[1] == pytest.approx([0.5, 0.5, 0.1, 0.1])
    rows = {"uniform": seeds, "dwm": seeds, "loss-linupper": {}}
    assert list(report.weight_panels(rows)) == ["dwm"]
    assert list(report.weight_panels({"uniform": seeds})) == ["uniform"]  # the only one is kept
    assert report.plot_domain_weights("junk", rows, tmp_path / "weights.png").stat().st_size > 0
    assert report.plot_domain_weights("junk", {}, tmp_path / "empty.png").stat().st_size > 0


def test_difference_and_loss_plots_with_many_methods(tmp_path):
    names = ["uniform", DOMAIN_ORACLE, "data-oracle", "loss-linupper", "loss-quadratic", "loss-extremes", "dwm",
             "dwm-transfer", "dwm-lr1e-2", "dwm-other"]
    styles = report.method_styles(names)
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in styles.values()}) == len(names)
    assert len({s["color"] for s in styles.values()}) == len(names)
    assert styles["loss-linupper"]["linestyle"] == "--" and styles["dwm"]["linestyle"] == "-"
    def run(final: float) -> report.RunData:
        return report.RunData({"tokens per iteration": 2048, "final target loss": final, "domains": ["A", "Junk"]},
                              _records(final, 100, 0.3))

    uniform = {seed: run(5.0 + 0.1 * seed) for seed in range(3)}
    rows = {"uniform": uniform, **{name: {seed: run(4.9 + 0.1 * seed + 0.01 * i) for seed in range(3)}
                                   for i, name in enumerate(names[1:])}}
    comparisons = {name: report.compare(seeds, uniform) for name, seeds in rows.items()}
    assert comparisons["dwm"]["paired difference at tokens"][-1]["mean"] == pytest.approx(-0.05)  # 4.9 + 0.05 - 5.0
    assert report.plot_difference("junk", comparisons, tmp_path / "difference.png").stat().st_size > 0
    assert report.plot_target_loss("junk", rows, tmp_path / "loss.png").stat().st_size > 0
    # uniform alone: nothing to pair, the plot still exists (results.md links it)
    alone = report.plot_difference("junk", {"uniform": comparisons["uniform"]}, tmp_path / "alone.png")
    assert alone.stat().st_size > 0


def test_ablations_get_their_own_tables_and_stay_out_of_the_plots(tmp_path, monkeypatch):
    """A DWM variant of methods.ABLATION_ONLY: a row in the scenario's ablation table and in the
    report's combined ablation table (with what it changes), none in the main table or the plots."""
    for seed in range(2):
        _result(tmp_path, "junk", "uniform", seed, _records(5.0, 100, 0.3))
        _result(tmp_path, "junk", "dwm", seed, _records(4.8, 150, 0.1))
        _result(tmp_path, "junk", "dwm-raw", seed, _records(4.9 + 0.1 * seed, 150, 0.2))
    lab = {"settings": runner.LabConfig(10).settings(), "commands": [], "wall-clock seconds": 1.0}
    plotted: dict[str, list[str]] = {}
    for plot in ("plot_target_loss", "plot_difference", "plot_domain_weights"):
        monkeypatch.setattr(report, plot, lambda scenario, methods, path, _plot=plot: plotted.update({_plot: list(methods)}))
    text = report.write_report(tmp_path, lab, []).read_text()
    assert plotted and all(names == ["uniform", "dwm"] for names in plotted.values()), plotted
    main, ablations = text.split("The DWM's ablations (docs/dwm.md):")
    assert "| dwm |" in main and "dwm-raw" not in main.split("![")[0]
    assert "| dwm-raw | 4.950 | -0.050 [" in ablations
    combined = text.split("## The DWM's ablations")[1]
    assert "| dwm-raw | defaults with --dwm-lr 1e-3, raw hypergradient | -0.050 [" in combined and "(2) |" in combined
    assert "| dwm | defaults:" in combined


def test_a_run_that_keeps_losing_the_port_race_fails_after_a_few_restarts(tmp_path, monkeypatch):
    """A run whose rendezvous port is taken (EADDRINUSE) is started again, at most PORT_RETRIES
    times; then it counts as failed and the lab goes on."""
    lab = runner.Lab(tmp_path, runner.LabConfig(30), {"junk": JUNK, "target": TARGET}, jobs=1,
                     console=io.StringIO())
    starts = []

    class PortTaken:
        returncode = 1

        def poll(self) -> int:
            return 1

    def start(run):
        starts.append(run.key)
        directory = lab.directory(run)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "log.txt").write_text("RuntimeError: ... EADDRINUSE (address already in use)\n")
        return runner.Started(run, [], PortTaken(), open(directory / "log.txt", "a"), 0.0)

    monkeypatch.setattr(lab, "start", start)
    lab.train([runner.Run("junk", "uniform", 0)])
    assert starts == ["junk/uniform/seed0"] * (1 + runner.PORT_RETRIES)
    assert "junk/uniform/seed0" in lab.failures
