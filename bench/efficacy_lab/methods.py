"""The weighting methods the lab compares: name -> the trainer flags of a run (data flags included).

A new method (a DWM variant, say) is one more entry in METHODS, e.g.
``Method("dwm-lr1e-2", dwm_flags("--dwm-lr", "1e-2"))``.

"domain-oracle" is not a run of its own: the runner trains every vector of the scenario's
``oracle_grid`` as "domain-grid-<i>" on the first LabConfig.grid_seeds seeds, then the vector with the
lowest mean final target loss on them on the other seeds (runner.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .scenarios import Scenario

TRANSFER = "transfer"  # the lab scenario that trains a larger model on the "target" scenario's data
DOMAIN_ORACLE = "domain-oracle"
GRID_PREFIX = "domain-grid-"


@dataclass(frozen=True)
class RunContext:
    """What a method's flags may depend on besides the scenario's data."""

    lab_scenario: str  # "junk", "target", "duplicates" or TRANSFER
    seed_index: int
    run_dir: Path
    source: Path | None = None  # checkpoint directory of the run this one builds on (dwm-transfer)
    train_iters: int = 120  # the lab's iterations per run


Flags = Callable[["Scenario", RunContext], list[str]]

# The default DWM's step time over uniform's in the lab: the mean over its 15 single-model runs
# (junk, target, duplicates; 5 seeds each) trained while the machine ran only the lab, from each run's
# logged time per iteration (docs/results.md). "dwm-equal-time" trains for uniform's wall-clock.
DWM_STEP_COST = 1.42
# The same schedule's cost on an H200 (bench/gpu_check.py, docs/performance.md): "dwm-equal-time-h200"
# trains for the wall-clock uniform would take there.
DWM_STEP_COST_H200 = 1.26


def equal_time_iters(train_iters: int, step_cost: float = DWM_STEP_COST) -> int:
    """The default DWM's iterations in the wall-clock of `train_iters` uniform iterations."""
    return round(train_iters / step_cost)


def equal_time_flags(step_cost: float) -> Flags:
    """The default DWM trained for `train_iters / step_cost` iterations, with its whole schedule."""
    return lambda scenario, context: [*dwm_flags()(scenario, context),
                                      "--train-iters", str(equal_time_iters(context.train_iters, step_cost))]


def pretraining_scenario(lab_scenario: str, scenario: Scenario) -> bool:
    return lab_scenario != TRANSFER


@dataclass(frozen=True)
class Method:
    """A weighting method: its run's flags, the lab scenarios it is run in, and the run it builds on
    as (lab scenario, method), same seed, if any."""

    name: str
    flags: Flags
    applies: Callable[[str, Scenario], bool] = pretraining_scenario
    requires: tuple[str, str] | None = None
    about: str = ""  # what a DWM variant changes, for the ablation table


def uniform_flags(scenario: Scenario, context: RunContext) -> list[str]:
    return ["--weighting", "uniform", *scenario.data_flags()]


def data_oracle_flags(scenario: Scenario, context: RunContext) -> list[str]:
    """Uniform weighting on the blend without the harmful data (its data order differs from uniform's)."""
    return ["--weighting", "uniform", *scenario.data_flags(scenario.oracle_blend)]


def loss_flags(strategy: str) -> Flags:
    """Loss-based weighting (Sow et al., ICLR 2025) with one of its strategies, default temperature."""
    return lambda scenario, context: ["--weighting", "loss", "--loss-weighting-strategy", strategy,
                                      *scenario.data_flags()]


def dwm_flags(*extra: str) -> Flags:
    """The DWM learning on the scenario's target-dev set, with `extra` DWM flags."""
    return lambda scenario, context: ["--weighting", "dwm", "--dwm-valid-data-path", scenario.target_dev_prefix,
                                      *extra, *scenario.data_flags()]


def dwm_transfer_flags(scenario: Scenario, context: RunContext) -> list[str]:
    """The DWM trained beside the small model (same seed), loaded frozen."""
    return ["--weighting", "dwm", "--dwm-load", str(context.source), "--dwm-freeze", *scenario.data_flags()]


def grid_flags(index: int) -> Flags:
    """Fixed per-domain weights: the scenario's index-th oracle-grid vector."""
    return lambda scenario, context: ["--weighting", "domain", "--domain-weights",
                                      *(f"{w:g}" for w in scenario.oracle_grid[index]), *scenario.data_flags()]


METHODS: dict[str, Method] = {method.name: method for method in [
    Method("uniform", uniform_flags, applies=lambda lab, scenario: True),
    Method("data-oracle", data_oracle_flags,
           applies=lambda lab, scenario: lab != TRANSFER and scenario.oracle_blend is not None),
    Method("loss-linupper", loss_flags("linupper")),
    Method("loss-quadratic", loss_flags("quadratic")),
    Method("loss-extremes", loss_flags("extremes")),
    Method("dwm", dwm_flags(),
           about="defaults: all along, every 4th step, grad, standardized, clip 0 2, --dwm-lr 3e-3"),
    Method("dwm-transfer", dwm_transfer_flags, applies=lambda lab, scenario: lab == TRANSFER,
           requires=("target", "dwm")),
    Method("dwm-equal-time", equal_time_flags(DWM_STEP_COST), applies=lambda lab, scenario: lab in ("junk", "target"),
           about=f"defaults, trained for uniform's wall-clock (its iterations / {DWM_STEP_COST})"),
    Method("dwm-equal-time-h200", equal_time_flags(DWM_STEP_COST_H200),
           applies=lambda lab, scenario: lab in ("junk", "target"),
           about=f"defaults, trained for uniform's wall-clock at the H200's step cost (its iterations / "
                 f"{DWM_STEP_COST_H200})"),
]}
# The DWM's defaults before docs/dwm.md's ablations, spelled out: a DWM phase of the first quarter of the
# (single) stage, an update every iteration of it, Adam's preconditioner, the raw hypergradient, no clip.
OLD_DEFAULTS = ("--dwm-update-iters", "30", "--dwm-update-interval", "1", "--dwm-fd-direction", "adam",
                "--dwm-hypergradient-scaling", "raw", "--dwm-weight-clip", "0", "inf", "--dwm-lr", "1e-3")
LR1E3 = ("--dwm-lr", "1e-3")  # the DWM's learning rate before the last change of defaults
ALL_ALONG = ("--dwm-update-iters", "120")  # the whole run of full mode (FULL_TRAIN_ITERS)
CLIP2, STD, GRAD = ("--dwm-weight-clip", "0", "2"), ("--dwm-hypergradient-scaling", "standardized"), \
    ("--dwm-fd-direction", "grad")


def every(interval: int) -> tuple[str, ...]:
    return "--dwm-update-interval", str(interval)


# docs/dwm.md's ablations, each with what it changes (the ablation table's second column): from the old
# defaults towards the new ones (later flags override earlier ones), then the new defaults with one
# lever taken back or moved further.
FORMER_TO_NEW = [
    Method("dwm-old-defaults", dwm_flags(*OLD_DEFAULTS),
           about="former defaults: DWM phase = first quarter, update every step, adam, raw, no clip"),
    Method("dwm-old-defaults-transfer", dwm_transfer_flags, applies=lambda lab, scenario: lab == TRANSFER,
           requires=("target", "dwm-old-defaults")),
    Method("dwm-all", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG), about="former + learning all along"),
    Method("dwm-all-clip2", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2), about="former + all along, clip 0 2"),
    Method("dwm-all-clip1.5", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, "--dwm-weight-clip", "0", "1.5"),
           about="former + all along, clip 0 1.5"),
    Method("dwm-all-clip2-grad", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, *GRAD),
           about="former + all along, clip 0 2, grad"),
    Method("dwm-all-clip2-int4", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, *every(4)),
           about="former + all along, clip 0 2, every 4th step"),
    Method("dwm-all-clip2-lr3e-3", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, "--dwm-lr", "3e-3"),
           about="former + all along, clip 0 2, --dwm-lr 3e-3"),
    Method("dwm-i4-std", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, *every(4), *STD),
           about="former + all along, clip 0 2, every 4th step, standardized (= defaults with adam)"),
    Method("dwm-i4-lr3e-3", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, *every(4), "--dwm-lr", "3e-3"),
           about="former + all along, clip 0 2, every 4th step, --dwm-lr 3e-3"),
    Method("dwm-i4-std-grad", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, *every(4), *STD, *GRAD),
           about="former + all along, clip 0 2, every 4th step, standardized, grad (= defaults)"),
    Method("dwm-i4-std-lr3e-3", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, *every(4), *STD, "--dwm-lr", "3e-3"),
           about="former + all along, clip 0 2, every 4th step, standardized, --dwm-lr 3e-3"),
    Method("dwm-i8-std", dwm_flags(*OLD_DEFAULTS, *ALL_ALONG, *CLIP2, *every(8), *STD),
           about="former + all along, clip 0 2, every 8th step, standardized"),
]
AROUND_DEFAULTS = [
    Method("dwm-lr1e-3", dwm_flags(*LR1E3), about="defaults, --dwm-lr 1e-3 (the defaults before --dwm-lr 3e-3)"),
    Method("dwm-lr1e-3-transfer", dwm_transfer_flags, applies=lambda lab, scenario: lab == TRANSFER,
           requires=("target", "dwm-lr1e-3")),
    Method("dwm-raw", dwm_flags(*LR1E3, "--dwm-hypergradient-scaling", "raw"),
           about="defaults with --dwm-lr 1e-3, raw hypergradient"),
    Method("dwm-noclip", dwm_flags(*LR1E3, "--dwm-weight-clip", "0", "inf"),
           about="defaults with --dwm-lr 1e-3, no clip (0 inf)"),
    Method("dwm-every-step", dwm_flags(*LR1E3, *every(1)), about="defaults with --dwm-lr 1e-3, update every step"),
    Method("dwm-quarter-phase", dwm_flags(*LR1E3, "--dwm-update-iters", "30"),
           about="defaults with --dwm-lr 1e-3, DWM phase = first quarter (then frozen)"),
    Method("dwm-every-2nd", dwm_flags(*LR1E3, *every(2)), about="defaults with --dwm-lr 1e-3, update every 2nd step"),
    Method("dwm-every-8th", dwm_flags(*every(8)), about="defaults, update every 8th step"),
]
ABLATIONS = FORMER_TO_NEW + AROUND_DEFAULTS
METHODS.update({method.name: method for method in ABLATIONS})
# The ablation table's rows, in order: the way from the old defaults, the defaults, the variants around them.
ABLATION_SETTINGS = {method.name: method.about for method in [*FORMER_TO_NEW, METHODS["dwm"], METHODS["dwm-equal-time"],
                                                                  METHODS["dwm-equal-time-h200"], *AROUND_DEFAULTS]
                     if method.about}
# The report's main tables and plots show the default methods and the old defaults; the other
# ablations get a table of their own.
ABLATION_ONLY = {method.name for method in ABLATIONS} - {"dwm-old-defaults", "dwm-old-defaults-transfer"}

# The methods a lab runs unless told otherwise, in the order of the report's tables.
DEFAULT_METHODS = ["uniform", DOMAIN_ORACLE, "data-oracle", "loss-linupper", "loss-quadratic", "loss-extremes",
                   "dwm", "dwm-equal-time", "dwm-equal-time-h200", "dwm-transfer"]


def grid_method_name(index: int) -> str:
    return f"{GRID_PREFIX}{index}"


def get_method(name: str) -> Method:
    """The method called `name` (a METHODS entry or a grid member "domain-grid-<i>")."""
    if name in METHODS:
        return METHODS[name]
    match = re.fullmatch(re.escape(GRID_PREFIX) + r"(\d+)", name)
    if match:
        return Method(name, grid_flags(int(match[1])),
                      applies=lambda lab, scenario: lab != TRANSFER and int(match[1]) < len(scenario.oracle_grid))
    raise ValueError(f"unknown method {name!r}; choose from: {', '.join([DOMAIN_ORACLE, *METHODS])}")


def domain_oracle_applies(lab_scenario: str, scenario: Scenario) -> bool:
    return lab_scenario != TRANSFER and bool(scenario.oracle_grid)
