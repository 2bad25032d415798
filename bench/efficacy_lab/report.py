"""The lab's report from its finished runs: OUT/results.json, OUT/results.md and OUT/plots/.

Every method is compared with uniform on the seeds both finished (paired: same initialisation and
data order); the domain oracle is the grid vector chosen on the grid seeds (runner.py).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from megatron_dwm.analysis.output import agg_figure, save_figure, write_text_atomically
from megatron_dwm.analysis.run_summary import format_duration
from megatron_dwm.training.metrics import read_metrics

from . import stats
from .methods import (ABLATION_ONLY, ABLATION_SETTINGS, DEFAULT_METHODS, DOMAIN_ORACLE, DWM_STEP_COST,
                      DWM_STEP_COST_H200, GRID_PREFIX, grid_method_name)
from .runner import RESULT, SELECTION, run_dir

BASELINE = "uniform"


@dataclass
class RunData:
    """A finished run: its result.json and metrics records."""

    result: dict[str, Any]
    records: list[dict]

    @property
    def tokens_per_iteration(self) -> int:
        return self.result["tokens per iteration"]

    def curve(self) -> tuple[list[int], list[float]]:
        """(tokens, target losses) at the run's evaluations."""
        iterations, losses = stats.eval_curve(self.records)
        return [i * self.tokens_per_iteration for i in iterations], losses


Seeds = dict[int, RunData]  # seed index -> run


# --- loading ---------------------------------------------------------------------------------------

def load_runs(out: Path) -> dict[str, dict[str, Seeds]]:
    """Every finished run under `out`: scenario -> method -> seed index -> run."""
    runs: dict[str, dict[str, Seeds]] = {}
    for path in sorted(out.glob(f"*/*/seed*/{RESULT}")):
        result = json.loads(path.read_text())
        records = read_metrics(path.parent / "metrics.jsonl")
        runs.setdefault(result["scenario"], {}).setdefault(result["method"], {})[result["seed index"]] = \
            RunData(result, records)
    return runs


def load_selection(out: Path, scenario: str) -> dict | None:
    path = out / scenario / SELECTION
    return json.loads(path.read_text()) if path.is_file() else None


def method_rows(methods: dict[str, Seeds], selection: dict | None) -> dict[str, Seeds]:
    """The table's rows of a scenario, in the lab's order: the grid members give way to the domain
    oracle (the chosen vector's runs on every seed)."""
    rows = {name: seeds for name, seeds in methods.items() if not name.startswith(GRID_PREFIX)}
    if selection is not None:
        rows[DOMAIN_ORACLE] = methods.get(grid_method_name(selection["chosen"]), {})
    order = {name: index for index, name in enumerate(DEFAULT_METHODS)}
    return dict(sorted(rows.items(), key=lambda item: order.get(item[0], len(order))))


def missing_runs(out: Path, planned: list[str]) -> list[str]:
    """The planned runs (keys 'scenario/method/seed<k>') without a result."""
    missing = []
    for key in planned:
        scenario, method, seed = key.split("/")
        if method == DOMAIN_ORACLE:
            selection = load_selection(out, scenario)
            if selection is None:
                missing.append(key)
                continue
            method = grid_method_name(selection["chosen"])
        if not (run_dir(out, scenario, method, int(seed.removeprefix("seed"))) / RESULT).is_file():
            missing.append(key)
    return missing


# --- comparisons -----------------------------------------------------------------------------------

def _estimate(values: list[float]) -> dict | None:
    estimate = stats.mean_ci(values)
    return asdict(estimate) if estimate else None


def paired_numbers(run: RunData, base: RunData) -> dict[str, float | None]:
    """One seed's comparison of a run with uniform's run of the same seed."""
    final, base_final = run.result["final target loss"], base.result["final target loss"]
    at_wall = stats.loss_at_seconds(run.records, stats.train_seconds(base.records))
    reached = stats.tokens_to_reach(*base.curve(), final)
    step_ms, base_step_ms = stats.mean_step_ms(run.records), stats.mean_step_ms(base.records)
    return {"equal wall-clock difference": None if at_wall is None else at_wall - base_final,
            "uniform tokens to reach ratio": None if reached is None else reached / run.curve()[0][-1],
            "step-time ratio": step_ms / base_step_ms if step_ms and base_step_ms else None}


def compare(runs: Seeds, uniform: Seeds) -> dict[str, Any]:
    """A method's numbers over its seeds and its paired comparisons with uniform (see stats.py)."""
    finals = {seed: run.result["final target loss"] for seed, run in runs.items()}
    paired = sorted(seed for seed in runs if seed in uniform)
    per_seed = {seed: paired_numbers(runs[seed], uniform[seed]) for seed in paired}

    def values(key: str) -> list[float]:
        return [numbers[key] for numbers in per_seed.values() if numbers[key] is not None]

    at_tokens: dict[int, list[float]] = {}
    for seed in paired:
        base = dict(zip(*uniform[seed].curve()))
        for tokens, loss in zip(*runs[seed].curve()):
            if tokens in base:
                at_tokens.setdefault(tokens, []).append(loss - base[tokens])
    reach = [numbers["uniform tokens to reach ratio"] for numbers in per_seed.values()]
    # a seed uniform never reaches counts as the largest ratio: the median is a number while most seeds reach
    median = statistics.median([math.inf if ratio is None else ratio for ratio in reach]) if reach else math.inf
    shares = {}
    for domain in runs[min(runs)].result["domains"] if runs else []:
        logged = [share for run in runs.values() if (share := stats.weight_share(run.records, domain))]
        if logged:
            shares[domain] = {"mean": statistics.fmean(mean for mean, _ in logged),
                              "end": statistics.fmean(end for _, end in logged)}
    ess = [value for run in runs.values() if (value := stats.mean_ess(run.records)) is not None]
    harmful = runs[min(runs)].result.get("harmful domain") if runs else None
    late = [value for run in runs.values()
            if harmful and (value := stats.late_mean_weight(run.records, harmful)) is not None]
    return {
        "seeds": sorted(runs), "paired seeds": paired, "per seed": per_seed,
        "final target loss": _estimate(list(finals.values())),
        "paired difference": _estimate(stats.paired_differences(
            finals, {seed: uniform[seed].result["final target loss"] for seed in paired})),
        "paired difference at tokens": [{"tokens": tokens, **_estimate(diffs)}
                                        for tokens, diffs in sorted(at_tokens.items())],
        "equal wall-clock difference": _estimate(values("equal wall-clock difference")),
        "uniform tokens to reach": {"median ratio": None if math.isinf(median) else median,
                                    "seeds never reached": reach.count(None), "seeds": len(reach)},
        "step-time ratio": _estimate(values("step-time ratio")),
        "weight share": shares,
        "mean ess": statistics.fmean(ess) if ess else None,
        "harmful weight, last quarter": {"mean": statistics.fmean(late), "highest": max(late)} if late else None,
    }


def scenario_report(scenario: str, methods: dict[str, Seeds], selection: dict | None) -> dict[str, Any]:
    """Every row's comparison with uniform, and the domain-weight grid's results."""
    rows = method_rows(methods, selection)
    uniform = rows.get(BASELINE, {})
    first = next((run.result for seeds in methods.values() for run in seeds.values()), {})
    return {**{key: first.get(key) for key in ("domains", "harmful domain", "target domain", "target-test tokens",
                                                "eval iters")},
            "methods": {name: compare(seeds, uniform) for name, seeds in rows.items() if seeds},
            "domain-oracle selection": selection}


# --- formatting ------------------------------------------------------------------------------------

def format_estimate(estimate: dict | None, digits: int = 3) -> str:
    """'-0.012 [-0.020, -0.004]'; just the mean for one value; '–' for none."""
    if not estimate:
        return "–"
    text = f"{estimate['mean']:+.{digits}f}"
    if estimate["low"] is not None:
        text += f" [{estimate['low']:+.{digits}f}, {estimate['high']:+.{digits}f}]"
    return text


def _reach(comparison: dict) -> str:
    reach = comparison["uniform tokens to reach"]
    if reach["median ratio"] is not None:
        return f"{reach['median ratio']:.2f}×"
    never = reach["seeds never reached"]
    return f"never ({never}/{reach['seeds']} seeds)" if never else "–"


def _share(comparison: dict, domain: str) -> str:
    share = comparison["weight share"].get(domain)
    return "–" if share is None else f"{share['mean']:.3f} / {share['end']:.3f}"


def _late_weight(comparison: dict) -> str:
    late = comparison.get("harmful weight, last quarter")
    return "–" if late is None else f"{late['mean']:.2f} / {late['highest']:.2f}"


def scenario_table(report: dict[str, Any], ablations: bool = False) -> str:
    """One markdown table: a row per method, either the main methods or (`ablations`) the DWM's
    ablations (methods.ABLATION_ONLY)."""
    domains = [d for d in (report["harmful domain"], report["target domain"]) if d]
    header = ["method", "final target loss", "Δ vs uniform [95% CI]", "Δ at equal wall-clock [95% CI]",
              "uniform tokens to reach", *(f"weight share on {d} (mean / end)" for d in domains),
              *([f"{report['harmful domain']} mean weight, last quarter (mean / highest seed)"]
                if report["harmful domain"] else []),
              "mean ESS", "step time × uniform", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, c in report["methods"].items():
        if (name in ABLATION_ONLY) != ablations:
            continue
        baseline = name == BASELINE
        final = c["final target loss"]
        step = c["step-time ratio"]
        selection = report["domain-oracle selection"]
        label = f"{name} ({describe_weights(report['domains'], selection['domain weights'])})" \
            if name == DOMAIN_ORACLE and selection else name
        cells = [label, f"{final['mean']:.3f}" if final else "–",
                 "–" if baseline else format_estimate(c["paired difference"]),
                 "–" if baseline else format_estimate(c["equal wall-clock difference"]),
                 "–" if baseline else _reach(c), *(_share(c, d) for d in domains),
                 *([_late_weight(c)] if report["harmful domain"] else []),
                 "–" if c.get("mean ess") is None else f"{c['mean ess']:.1f}",
                 "–" if baseline or not step else f"{step['mean']:.2f}", str(len(c["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(report: dict[str, Any], scenarios: tuple[str, ...] = ("junk", "target")) -> str:
    """The DWM's variants side by side over `scenarios`: what each changes, its paired difference to
    uniform (seeds), the harmful domain's late mean weight, its mean ESS and step-time ratio."""
    present = [s for s in scenarios if s in report["scenarios"]]
    header = ["variant", "what differs", *(f"{s}: Δ vs uniform [95% CI] (seeds)" for s in present),
              *(f"{s}: Δ at equal wall-clock" for s in present), "junk weight, last quarter (mean / highest)",
              "mean ESS", "step time × uniform"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, setting in ABLATION_SETTINGS.items():
        found = [report["scenarios"][s]["methods"].get(name) for s in present]
        if not any(found):
            continue
        cells = [name, setting]
        cells += [f"{format_estimate(c['paired difference'])} ({len(c['paired seeds'])})" if c else "–" for c in found]
        cells += [format_estimate(c["equal wall-clock difference"]) if c else "–" for c in found]
        junk = report["scenarios"].get("junk", {}).get("methods", {}).get(name)
        cells.append(_late_weight(junk) if junk else "–")
        ess = [c["mean ess"] for c in found if c and c.get("mean ess") is not None]
        steps = [c["step-time ratio"]["mean"] for c in found if c and c.get("step-time ratio")]
        cells.append(" / ".join(f"{value:.1f}" for value in ess) or "–")
        cells.append(" / ".join(f"{value:.2f}" for value in steps) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_weights(domains: list[str], weights: list[float]) -> str:
    """'Junk 0.5' for the weights other than 1 ('all 1' if none)."""
    return ", ".join(f"{domain} {weight:g}" for domain, weight in zip(domains, weights) if weight != 1) or "all 1"


def grid_table(selection: dict, domains: list[str]) -> str:
    """The domain-weight grid: each vector's mean final target loss on the grid seeds."""
    lines = ["| domain weights (others 1) | mean final target loss | |", "|---|---|---|"]
    for index, (vector, mean) in enumerate(zip(selection["grid"], selection["mean final target loss"])):
        loss = "failed" if mean is None else f"{mean:.4f}"
        chosen = "chosen" if index == selection["chosen"] else ""
        lines.append(f"| {describe_weights(domains, vector)} | {loss} | {chosen} |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """results.md: the settings, then per scenario its table, grid and plots, then what is missing."""
    settings = report["settings"]
    tokens = settings["train_iters"] * settings["global_batch_size"] * settings["seq_length"]
    parts = ["# Efficacy lab results", "",
             f"Each run: {settings['train_iters']} iterations ({tokens:,} tokens); the target loss is evaluated "
             f"every {settings['eval interval']} iterations on the whole target-test set. Differences are "
             "method - uniform on paired seeds (negative: the method is better), mean [95% t interval]. Equal "
             "wall-clock: the method's target loss after the training time uniform took (its final loss if it "
             "took less), times being the logged time per iteration of runs trained two at a time; "
             f"dwm-equal-time is the default DWM trained for uniform's wall-clock from the start (its "
             f"iterations: uniform's / {DWM_STEP_COST}, the DWM's measured step-time ratio, with its whole "
             "learning-rate schedule), so its Δ vs uniform is the equal-wall-clock comparison of a user with a "
             f"fixed time budget; dwm-equal-time-h200 the same at the schedule's cost on an H200 ("
             f"{DWM_STEP_COST_H200}). Uniform tokens to reach: the tokens uniform needed for the method's final loss, as a "
             "ratio to the method's tokens (median over seeds). Weight share: the domain's share of the total "
             "sample weight, mean over the run / at the end (uniform's is the domain's share of the data). Mean "
             "ESS: the effective sample size (sum w)^2 / sum w^2 of each global batch, mean over the run "
             "(uniform's is the batch size). The "
             "domain oracle is the grid vector with the lowest mean final target loss on the grid seeds, which "
             "its comparison includes. Plots per scenario: the paired difference with uniform at each "
             "evaluation and the target loss (both mean over seeds with a 95% t band), and the mean weight of "
             f"each domain's samples (uniform's is 1), a trailing mean over {WEIGHT_WINDOW} logged iterations "
             "averaged over seeds; the harmful or target domain is drawn thick.", "",
             f"Lab wall-clock: {format_duration(report['wall-clock seconds'])}. Commands:", "",
             *(f"    {' '.join(command)}" for command in report["commands"]), ""]
    for scenario, entry in report["scenarios"].items():
        about = [f"{what}: {entry[what]}" for what in ("harmful domain", "target domain") if entry[what]]
        if entry["target-test tokens"]:
            about.append(f"target-test set: {entry['target-test tokens']:,} tokens, {entry['eval iters']} batches "
                         "per evaluation")
        parts += [f"## {scenario}", "", *(["; ".join(about) + ".", ""] if about else []), scenario_table(entry), ""]
        if entry["domain-oracle selection"]:
            parts += [f"Domain-weight grid ({len(entry['domain-oracle selection']['seeds'])} seeds):", "",
                      grid_table(entry["domain-oracle selection"], entry["domains"]), ""]
        if any(name in ABLATION_ONLY for name in entry["methods"]):
            parts += ["The DWM's ablations (docs/dwm.md):", "", scenario_table(entry, ablations=True), ""]
        parts += [f"![{scenario}: paired difference with uniform](plots/{scenario}-difference.png)", "",
                  f"![{scenario}: target loss](plots/{scenario}-target-loss.png)", "",
                  f"![{scenario}: mean weight per domain](plots/{scenario}-domain-weights.png)", ""]
    if any(name in ABLATION_SETTINGS and name != "dwm" for entry in report["scenarios"].values()
           for name in entry["methods"]):
        parts += ["## The DWM's ablations", "", "Each variant against uniform on the paired seeds it was run on "
                  "(ESS and step time: per scenario, in the order of the columns).", "", ablation_table(report), ""]
    missing = report["failed or missing runs"]
    parts.append(f"Failed or missing runs: {', '.join(missing) if missing else 'none'}.")
    return "\n".join(parts) + "\n"


# --- plots -----------------------------------------------------------------------------------------

WEIGHT_WINDOW = 10  # logged iterations in the trailing mean of the domain-weight plot
TOKENS_LABEL = "training tokens"
LOSS_UNIT = "nats/token"

# A method keeps its colour, line style and marker in every plot; the styles mark the families
# (oracles dash-dotted, loss-based dashed, DWM solid). Other methods (variants) take the spare colours.
_METHOD_COLOURS = {"uniform": "black", DOMAIN_ORACLE: "tab:green", "data-oracle": "tab:olive",
                   "loss-linupper": "tab:purple", "loss-quadratic": "tab:pink", "loss-extremes": "tab:brown",
                   "dwm": "tab:red", "dwm-transfer": "tab:orange"}
_SPARE_COLOURS = ["tab:blue", "tab:cyan", "tab:gray", "navy", "darkgoldenrod", "teal", "crimson", "slateblue"]
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p"]
_LINESTYLES = ["-", "--", "-.", ":"]


def method_styles(names: list[str]) -> dict[str, dict[str, str]]:
    """Matplotlib line keywords per method: distinct colours and markers, the line style by family."""
    styles, spare = {}, 0
    for index, name in enumerate(names):
        if name in _METHOD_COLOURS:
            colour = _METHOD_COLOURS[name]
            linestyle = "-." if "oracle" in name else "--" if name.startswith("loss-") else "-"
        else:
            colour = _SPARE_COLOURS[spare % len(_SPARE_COLOURS)]
            linestyle = _LINESTYLES[spare // len(_SPARE_COLOURS) % len(_LINESTYLES)]
            spare += 1
        styles[name] = {"color": colour, "linestyle": linestyle, "marker": _MARKERS[index % len(_MARKERS)]}
    return styles


def _tokens_axis(axes: Any) -> None:
    """Training tokens on the x axis, as 0, 50k, 100k..."""
    from matplotlib.ticker import EngFormatter

    axes.xaxis.set_major_formatter(EngFormatter(sep=""))
    axes.set_xlabel(TOKENS_LABEL)


def _legend_outside(axes: Any, handles: list | None = None, labels: list | None = None, **kwargs: Any) -> None:
    """A legend right of the axes, its top at theirs (a "constrained" figure makes room for it)."""
    if handles is None:
        handles, labels = axes.get_legend_handles_labels()
    if handles:
        axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                    **kwargs)


def _mean_band(curves: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float], list, list]:
    """x, mean, low, high over the x values every curve has (low/high None with one curve)."""
    common = sorted(set.intersection(*(set(x) for x, _ in curves))) if curves else []
    points = [[dict(zip(x, y))[at] for x, y in curves] for at in common]
    estimates = [stats.mean_ci(values) for values in points]
    return common, [e.mean for e in estimates], [e.low for e in estimates], [e.high for e in estimates]


def plot_target_loss(scenario: str, rows: dict[str, Seeds], path: Path) -> Path:
    """Target loss against training tokens per method: mean over seeds, 95% t band; legend outside."""
    figure = agg_figure(figsize=(9, 4.8), layout="constrained")
    axes = figure.add_subplot()
    styles = method_styles(list(rows))
    for name, seeds in rows.items():
        x, mean, low, high = _mean_band([run.curve() for run in seeds.values()])
        if not x:
            continue
        axes.plot(x, mean, label=f"{name} (n={len(seeds)})", markersize=4, linewidth=1.4, **styles[name])
        if None not in low:
            axes.fill_between(x, low, high, color=styles[name]["color"], alpha=0.12, linewidth=0)
    _tokens_axis(axes)
    axes.set(ylabel=f"target loss ({LOSS_UNIT})", title=f"{scenario}: target loss (mean over seeds, 95% t band)")
    axes.grid(alpha=0.3)
    _legend_outside(axes)
    return save_figure(figure, path)


def plot_difference(scenario: str, comparisons: dict[str, dict], path: Path) -> Path:
    """Per method, its target loss - uniform's at each evaluation's token count: mean over the paired
    seeds with the 95% t band (compare's "paired difference at tokens"), zero marked."""
    figure = agg_figure(figsize=(9, 4.8), layout="constrained")
    axes = figure.add_subplot()
    styles = method_styles(list(comparisons))
    alpha = max(0.06, 0.25 / math.sqrt(max(1, len(comparisons) - 1)))  # fainter bands when many overlap
    axes.axhline(0.0, color="black", linewidth=1.0, label=f"{BASELINE} (0)")
    for name, comparison in comparisons.items():
        points = comparison["paired difference at tokens"]
        if name == BASELINE or not points:
            continue
        x = [point["tokens"] for point in points]
        pairs = len(comparison["paired seeds"])
        axes.plot(x, [point["mean"] for point in points], label=f"{name} ({pairs} pair{'s' if pairs != 1 else ''})",
                  markersize=4, linewidth=1.4, **styles[name])
        if all(point["low"] is not None for point in points):
            axes.fill_between(x, [point["low"] for point in points], [point["high"] for point in points],
                              color=styles[name]["color"], alpha=alpha, linewidth=0)
    if len(axes.lines) == 1:
        axes.text(0.5, 0.5, f"no method paired with {BASELINE}", transform=axes.transAxes, ha="center")
    _tokens_axis(axes)
    axes.set(ylabel=f"target loss - {BASELINE}'s ({LOSS_UNIT})\nbelow 0: better than {BASELINE}",
             title=f"{scenario}: paired difference with {BASELINE} (mean over seeds, 95% t band)")
    axes.grid(alpha=0.3)
    _legend_outside(axes)
    return save_figure(figure, path)


def domain_weight_series(seeds: Seeds, domain: str, window: int = WEIGHT_WINDOW) -> tuple[list[int], list[float]]:
    """(training tokens, the mean weight of the domain's samples): each seed's trailing mean over `window`
    logged iterations (stats.domain_weight_curve), then the mean over the seeds."""
    curves = []
    for run in seeds.values():
        iterations, weights = stats.domain_weight_curve(run.records, domain, window)
        curves.append(([i * run.tokens_per_iteration for i in iterations], weights))
    return stats.pointwise_mean(curves)


def weight_panels(rows: dict[str, Seeds]) -> dict[str, Seeds]:
    """The methods the domain-weight plot draws: those with runs, less uniform (whose weights are all 1)
    unless it is the only one."""
    rows = {name: seeds for name, seeds in rows.items() if seeds}
    return {name: seeds for name, seeds in rows.items() if name != BASELINE} or rows


def plot_domain_weights(scenario: str, rows: dict[str, Seeds], path: Path, window: int = WEIGHT_WINDOW) -> Path:
    """A panel per method (uniform left out: all 1): the mean weight of each domain's samples over
    training, smoothed (domain_weight_series); shared y axis from 0, 1 dashed, the harmful and target
    domains thick."""
    panels = weight_panels(rows)
    first = next((run.result for seeds in panels.values() for run in seeds.values()), {})
    domains = first.get("domains", [])
    roles = {first.get("harmful domain"): "harmful", first.get("target domain"): "target"}
    columns = min(3, max(1, len(panels)))
    panel_rows = math.ceil(max(1, len(panels)) / columns)
    figure = agg_figure(figsize=(3.6 * columns + 2.6, 2.9 * panel_rows + 0.8), layout="constrained")
    grid = figure.subplots(panel_rows, columns, sharex=True, sharey=True, squeeze=False)
    colours = [f"C{index % 10}" for index in range(len(domains))]
    for index, axes in enumerate(grid.flat):
        if index >= len(panels):  # an empty place in the last row: the panel above shows the x axis
            axes.set_visible(False)
            above = grid[index // columns - 1, index % columns]
            above.xaxis.set_tick_params(labelbottom=True)
            above.set_xlabel(TOKENS_LABEL)
            continue
        name, seeds = list(panels.items())[index]
        axes.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        for domain, colour in zip(domains, colours):
            x, y = domain_weight_series(seeds, domain, window)
            role = roles.get(domain)
            if x:
                axes.plot(x, y, color=colour, linewidth=2.6 if role else 1.2, zorder=3 if role else 2,
                          label=f"{domain} ({role})" if role else domain)
        axes.set_title(f"{name} (n={len(seeds)})", fontsize=10)
        axes.grid(alpha=0.3)
        _tokens_axis(axes)
        if index + columns < len(panels):
            axes.set_xlabel("")
        if axes.get_subplotspec().is_first_col():
            axes.set_ylabel("mean sample weight")
    grid.flat[0].set_ylim(bottom=0)
    handles = {label: handle for axes in grid.flat for handle, label in zip(*axes.get_legend_handles_labels())}
    _legend_outside(grid[0, min(columns, len(panels)) - 1], list(handles.values()), list(handles), title="domain",
                    title_fontsize=8)
    left_out = " (uniform: all 1)" if BASELINE in rows and BASELINE not in panels else ""
    figure.suptitle(f"{scenario}: mean weight of each domain's samples{left_out}\ntrailing mean over {window} "
                    "logged iterations, mean over seeds", fontsize=10)
    return save_figure(figure, path)


# --- the whole report ------------------------------------------------------------------------------

def run_numbers(run: RunData) -> dict[str, Any]:
    """A run's result.json with its target-loss curve, training time and weighting statistics."""
    shares = {domain: share for domain in run.result["domains"]
              if (share := stats.weight_share(run.records, domain)) is not None}
    return {**run.result, "target loss curve": dict(zip(("tokens", "target loss"), run.curve())),
            "training seconds": stats.train_seconds(run.records), "mean step ms": stats.mean_step_ms(run.records),
            "weight share (mean, end)": shares, "mean ess": stats.mean_ess(run.records)}


def build_report(out: Path, runs: dict[str, dict[str, Seeds]], lab: dict[str, Any],
                 planned: list[str]) -> dict[str, Any]:
    """results.json's content: settings, commands, wall-clock, every run, every comparison."""
    scenarios = list(dict.fromkeys([key.split("/")[0] for key in planned] + list(runs)))
    return {
        "settings": lab["settings"], "commands": lab["commands"], "wall-clock seconds": lab["wall-clock seconds"],
        "runs": [run_numbers(run) for methods in runs.values() for seeds in methods.values() for run in seeds.values()],
        "scenarios": {scenario: scenario_report(scenario, runs.get(scenario, {}), load_selection(out, scenario))
                      for scenario in scenarios},
        "failed or missing runs": missing_runs(out, planned),
    }


def write_report(out: Path, lab: dict[str, Any], planned: list[str]) -> Path:
    """Write OUT/results.json, OUT/results.md and the plots; the path of results.md."""
    runs = load_runs(out)
    report = build_report(out, runs, lab, planned)
    for scenario in report["scenarios"]:
        rows = {name: seeds for name, seeds in method_rows(runs.get(scenario, {}), load_selection(out, scenario)).items()
                if name not in ABLATION_ONLY}
        plot_target_loss(scenario, rows, out / "plots" / f"{scenario}-target-loss.png")
        comparisons = {name: comparison for name, comparison in report["scenarios"][scenario]["methods"].items()
                       if name not in ABLATION_ONLY}
        plot_difference(scenario, comparisons, out / "plots" / f"{scenario}-difference.png")
        plot_domain_weights(scenario, rows, out / "plots" / f"{scenario}-domain-weights.png")
    write_text_atomically(out / "results.json", json.dumps(report, indent=1) + "\n")
    return write_text_atomically(out / "results.md", markdown(report))
