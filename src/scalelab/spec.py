"""Study specs: YAML in, validated, expanded into runs with stable ids.

A study file names a task, a model family and a method (each a registered plug-in plus its
settings), the training settings, ``grid`` axes over any of those settings, and ``seeds``.
Expansion is the cartesian product of the axes (in file order) times the seeds. Each run's
config is *fully resolved* — every default filled in by the plug-in's own config class — and
its id is a hash of that config, so an edited study reruns only the cells that changed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import math
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RenamedSetting, ScalelabError, StudyError
from .plugin import Identity
from .records import RunSpec, run_id
from .registry import FAMILIES, UnknownNameError

PLUGIN_SECTIONS = ("task", "model", "method")
SECTIONS = (*PLUGIN_SECTIONS, "train")


class StrictModel(BaseModel):
    # inf and nan pass `gt=0` style bounds in pydantic unless refused outright
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EarlyStopping(StrictModel):
    patience: int = Field(ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest val-loss drop that counts")


class Augment(StrictModel):
    """On-device augmentation of in-memory training images (or signals), drawn per run from
    its seed; evaluation never sees it (test-time augmentation is an evaluator)."""

    flip: Literal["none", "random", "alternating"] = Field(
        "none", description="horizontal flip: random per image, or airbench's alternating "
        "(a random flip fixed per image, and every image flipped again in odd epochs)")
    translate: int = Field(0, ge=0, description="random shift of up to this many pixels, "
                           "edges filled by reflection")
    cutout: int = Field(0, ge=0, description="side of a square zeroed at a random place")


class ParamGroup(StrictModel):
    """Training settings of the parameters whose names match ``match`` (the first group that
    matches a name wins; names as ``model.named_parameters()`` gives them)."""

    match: str = Field(min_length=1, description="glob over parameter names, e.g. '*norm*.bias'")
    lr_scale: float = Field(1.0, gt=0, description="multiplies train.lr for these parameters")
    weight_decay_scale: float = Field(1.0, ge=0, description="multiplies train.weight_decay")
    frozen_after_epochs: float | None = Field(
        None, gt=0, description="trained for this many epochs, then left as they are")


class Averaging(StrictModel):
    """Averaged weights (airbench's lookahead, or an EMA): every ``every`` steps the average
    moves toward the weights by 1 - decay x (step / total steps) ^ warmup_power; lookahead
    also puts the average back into the model. Both end the run on the averaged weights."""

    kind: Literal["lookahead", "ema"] = Field(description="lookahead or ema")
    every: int = Field(1, ge=1, description="steps between updates of the average")
    decay: float = Field(ge=0, lt=1, description="weight kept by the average at full strength")
    warmup_power: float = Field(0.0, ge=0, description="decay ramps up as (step / total) ^ "
                                "this (airbench: 3); 0 keeps it constant")


class TrainConfig(Identity, StrictModel):
    """Optimisation settings shared by every run of a study (each can be a grid axis)."""

    later_settings: ClassVar[dict[str, object]] = {
        "warmup_fraction": None, "initial_lr_ratio": 0.0, "channels_last": False,
        "label_smoothing": 0.0, "augment": None, "param_groups": [], "averaging": None,
        "reference_batch_size": None, "decay_fraction": 0.2, "decay_shape": "linear"}

    optimizer: Literal["sgd", "adam", "adamw", "muon"] = Field(
        "adam", description="optimizer (muon: Muon for hidden matrices, AdamW for the rest)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW's part under muon)")
    reference_batch_size: int | None = Field(
        None, ge=1, description="lr is stated for this batch size and scales with batch_size / "
        "this (a summed-loss recipe's rule: airbench states lr and weight decay per 1,024 "
        "examples), so coupled weight decay per step scales with it too; None: lr as given")
    muon_lr: float = Field(0.02, gt=0, description="peak learning rate of Muon's matrices")
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon momentum (Nesterov)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam/AdamW beta1")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam/AdamW beta2")
    weight_decay: float = Field(0.0, ge=0, description="L2 (sgd/adam) or decoupled (adamw)")
    batch_size: int = Field(
        128, ge=1, description="examples (sequences for a language model) per step; capped at num_train")
    max_steps: int | None = Field(None, ge=1, description="budget in optimizer steps")
    epochs: float | None = Field(None, gt=0, description="budget in passes over the train set")
    schedule: Literal["constant", "cosine", "linear", "airbench", "wsd"] = Field(
        "cosine", description="decay after warm-up; airbench: straight lines from "
        "initial_lr_ratio up to lr at the warm-up's end and down to final_lr_ratio at the "
        "budget's end (airbench's np.interp); wsd: warm-up, stable at lr, then decay to "
        "final_lr_ratio over the last decay_fraction of the steps")
    decay_fraction: float = Field(
        0.2, description="wsd schedule: the share of the steps, in (0, 1], that decay")
    decay_shape: Literal["linear", "1-sqrt"] = Field(
        "linear", description="wsd schedule: the decay's shape (1-sqrt: Hägele et al. 2024)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from 0 to lr")
    warmup_fraction: float | None = Field(
        None, ge=0, lt=1, description="warm-up as a fraction of the budget (replaces warmup_steps)")
    initial_lr_ratio: float = Field(0.0, ge=0, le=1,
                                    description="airbench schedule: lr at step 0 / peak lr")
    final_lr_ratio: float = Field(0.0, ge=0, le=1, description="lr at the end / peak lr")
    eval_every: int = Field(100, ge=1, description="steps between validation evaluations")
    early_stopping: EarlyStopping | None = Field(None, description="stop on val-loss plateau")
    restore_best: bool = Field(True, description="return the best-validation weights")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm")
    eval_batch_size: int = Field(
        4096, ge=1, description="examples (tokens for a language model) per evaluation forward")
    eval_train_samples: int = Field(
        10_000, ge=1, description="train examples (tokens for a language model) in train metrics")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast forward passes to bfloat16 (weights stay fp32)")
    compile: bool = Field(False, description="torch.compile the model before training")
    channels_last: bool = Field(False, description="image models and batches in channels-last "
                                "memory layout (faster convolutions on GPUs)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="of the training loss; "
                                   "evaluation scores plain cross-entropy")
    augment: Augment | None = Field(None, description="on-device training augmentation")
    param_groups: list[ParamGroup] = Field(
        default_factory=list, description="per-parameter-group lr/weight-decay scales")
    averaging: Averaging | None = Field(None, description="lookahead or EMA of the weights")

    @field_validator("decay_fraction")
    @classmethod
    def _decay_share(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1] (the share of the steps that decay), not {value:g}")
        return value

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one budget: max_steps or epochs")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer: sgd with momentum > 0")
        if self.param_groups and self.optimizer == "muon":
            raise ValueError("param_groups: not with optimizer muon (it splits the "
                             "parameters itself)")
        return self

    def at_batch(self, batch: int) -> TrainConfig:
        """These settings for a run whose batch really is ``batch`` (capped at the training
        set): the learning rates scaled by ``batch / reference_batch_size`` when one is set."""
        if self.reference_batch_size is None:
            return self
        scale = batch / self.reference_batch_size
        return self.model_copy(update={"lr": self.lr * scale, "muon_lr": self.muon_lr * scale})


class AnalysisConfig(StrictModel):
    """What the report fits and compares (defaults suit classification studies)."""

    metric: str = Field("test_loss", description="metric fitted against size and data")
    compare_metric: str = Field("test_acc", description="metric of method comparisons")
    size: str = Field("n_params", description="model-size column (n_params_nonembed for GPTs)")
    forms: list[str] = Field(default_factory=lambda: ["auto"],
                             description="law forms fitted against size (auto: chosen by backtest)")
    data: str = Field("auto", description="data column D of the joint law L(N, D): auto (the "
                      "study's data axis) or a consumed amount such as samples_seen or "
                      "tokens_seen, which compute-optimal allocation needs")
    target_compute: float | None = Field(
        None, gt=0, description="training FLOPs the compute-optimal approaches quote N* at "
                                "(default: 10x the largest budget or run)")

    @field_validator("forms")
    @classmethod
    def _known_forms(cls, forms: list[str]):
        for form in forms:
            if form != "auto" and form not in FAMILIES["law"]:
                raise ValueError(f"unknown law form {form!r} (allowed: auto, "
                                 f"{', '.join(FAMILIES['law'].names())})")
        if not forms:
            raise ValueError("give at least one form (or auto)")
        return forms


class Resources(StrictModel):
    """What one training task (a run, or a stacked group) asks of a cluster (``--backend ray``)."""

    cpus: float = Field(1.0, gt=0, description="CPU cores per task (also its torch threads)")
    gpus: float = Field(0.0, ge=0, description="GPUs per task (fractions share one GPU); > 0 "
                                               "trains on CUDA")


class IsoflopDesign(StrictModel):
    """Compute budgets x model sizes; each cell's data amount spends its budget (design.py)."""

    budgets: list[Annotated[float, Field(gt=0)]] = Field(
        min_length=1, description="training FLOPs per run (counted forward + backward)")
    sizes: dict[str, list[Any]] = Field(
        description="one model-size axis and its values, e.g. {width: [16, 32, 64, 128, 256]}")
    data: str = Field(description="the axis that sets the data amount: train.max_steps (steps "
                                  "of one batch), or task.num_train (with a train.epochs budget)")

    @field_validator("budgets")
    @classmethod
    def _distinct_budgets(cls, budgets: list[float]):
        if len(set(budgets)) != len(budgets):
            raise ValueError("budgets repeat")
        return sorted(budgets)

    @field_validator("sizes")
    @classmethod
    def _one_size_axis(cls, sizes: dict[str, list[Any]]):
        if len(sizes) != 1 or not next(iter(sizes.values())):
            raise ValueError("give exactly one size axis with at least one value")
        return sizes


class ValueRange(StrictModel):
    """A continuous nuisance axis (``nuisance_search: tpe``): its values are chosen per shape
    as results arrive, ``log_range`` uniformly in the logarithm."""

    range: tuple[float, float] | None = None
    log_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_ordered_range(self):
        if (self.range is None) == (self.log_range is None):
            raise ValueError("give exactly one of range: [low, high] or log_range: [low, high]")
        low, high = self.bounds
        if not low < high:
            raise ValueError("the low end must be below the high end")
        if self.log_range is not None and low <= 0:
            raise ValueError("log_range needs positive ends")
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        return self.log_range if self.log_range is not None else self.range

    @property
    def log(self) -> bool:
        return self.log_range is not None

    @property
    def middle(self) -> float:
        """A value the range's runs are validated with (the geometric middle of a log range)."""
        low, high = self.bounds
        return math.sqrt(low * high) if self.log else (low + high) / 2


class NuisanceSearch(StrictModel):
    """How each shape's nuisance settings are searched (``search.py``): every setting trained
    to the end (``grid``), asynchronous successive halving (``halving``), or Optuna's TPE
    sampler over continuous ranges (``tpe``)."""

    method: Literal["grid", "halving", "tpe"] = Field(
        "grid", description="grid: every setting to the end; halving: a setting trains on "
                            "past each rung only if it is among the best 1/eta of its shape's; "
                            "tpe: `trials` values per shape from ranges, each chosen by Optuna's "
                            "TPE sampler from the shape's results so far")
    eta: int = Field(3, ge=2, description="halving: keep the best 1/eta at each rung; rungs "
                                          "are eta times apart in steps")
    rungs: int = Field(2, ge=1, description="halving: rungs before the full budget (the first "
                                            "at budget / eta^rungs)")
    margin: float = Field(1.0, ge=0, description="halving: also keep a setting within this "
                          "many standard errors (over seeds) of the last one kept (0: plain "
                          "ASHA)")
    start: Literal["grid", "law"] = Field(
        "grid", description="halving: which settings start: every grid value, or the `window` "
                            "values nearest the learning-rate law's prediction for the shape "
                            "(fitted on the smaller shapes; the grid until there is a law)")
    window: int = Field(3, ge=2, description="start: law: grid values started per shape; one "
                                             "more beyond an edge the winner lands on")
    trials: int = Field(8, ge=2, le=1000, description="tpe: values tried per shape")
    startup: int = Field(3, ge=1, description="tpe: trials drawn at random before the sampler "
                                              "models the results")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"method": value} if isinstance(value, str) else value


class Design(StrictModel):
    """A study design other than the plain grid."""

    isoflop: IsoflopDesign


class StudySpec(StrictModel):
    """The top level of a study file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100,
                      description="study name (also its output folder's name)")
    description: str = ""
    task: dict[str, Any]
    model: dict[str, Any]
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "standard"})
    train: dict[str, Any]
    grid: dict[str, list[Any] | ValueRange] | list[dict[str, list[Any] | ValueRange]] = Field(
        default_factory=dict,
        description="axes -> values (their product), or a list of such grids (the union)")
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(default_factory=lambda: [0])
    nuisance: list[str] = Field(
        default_factory=list,
        description="grid axes tuned per shape (lr, weight decay, ...); the rest are scientific",
    )
    nuisance_search: NuisanceSearch = Field(
        default_factory=NuisanceSearch,
        description="grid (every nuisance setting to the end) or halving: {eta, rungs, start: "
                    "grid|law, window}")
    save_checkpoints: bool = False
    trackers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="experiment trackers and their settings, e.g. "
                                          "{mlflow: {tracking_uri: ...}} or {wandb: {mode: offline}}")
    resources: Resources = Field(default_factory=Resources,
                                 description="per-task resources on a cluster (--backend ray)")
    max_runs: int = Field(
        10_000, ge=1, description="refuse a study of more runs (cells x seeds) than this: "
                                  "expanding one takes about 0.3 ms a run; raise it on purpose")
    stack_runs: Literal["auto", "off"] = Field(
        "auto", description="train runs that differ only in seed/lr/wd/betas/momentum together "
                            "as one stacked model")
    stack_memory_mb: float = Field(1024, gt=0, description="memory limit of one stack")
    stack_min_runs: int | None = Field(
        None, ge=2, description="smallest stack worth training (default: the model family's)")
    stack_pad: bool = Field(
        False, description="zero-pad sizes (MLP width) so runs of different widths share a group")
    baselines: list[Literal["full", "matched_full", "random"]] = Field(
        default_factory=list,
        description="for every selection run (a method with a target_rate): full data at the "
                    "same steps, a compute-matched full run, a random subset at the same rate")
    evaluations: list[dict[str, Any] | str] = Field(
        default_factory=list,
        description="settings `scalelab evaluate` re-scores every checkpoint under (a list value "
                    "expands to one setting per value); the first is the comparisons' baseline")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    design: Design | None = Field(None, description="isoflop: {budgets, sizes, data}: each "
                                  "budget x size cell gets the data that spends the budget")
    quick: dict[str, Any] = Field(default_factory=dict)

    @field_validator("task", "model", "method", mode="before")
    @classmethod
    def _name_shorthand(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("stack_runs", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads a bare `off` as false and `on` as true.
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("a seed count must be at least 1")
            return list(range(value))
        if not isinstance(value, list):
            raise ValueError("expected a number of seeds (e.g. 3) or a list of seeds (e.g. "
                             "[0, 1, 2])")
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]):
        if not value:
            raise ValueError("at least one seed is needed")
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @field_validator("grid", mode="before")
    @classmethod
    def _ranges(cls, grid):
        """An axis given as a mapping is a range (its own message when it is a bad one)."""
        def ranged(sub):
            if not isinstance(sub, dict):
                return sub
            out = dict(sub)
            for axis, values in sub.items():
                if isinstance(values, dict):
                    try:
                        out[axis] = ValueRange.model_validate(values)
                    except ValidationError as exc:
                        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                        raise ValueError(f"{axis}: {reason} (a range is {{log_range: [low, "
                                         "high]}} or {range: [low, high]})") from None
            return out
        return [ranged(sub) for sub in grid] if isinstance(grid, list) else ranged(grid)

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, grid):
        for sub in grid if isinstance(grid, list) else [grid]:
            for axis, values in sub.items():
                if not values:
                    raise ValueError(f"axis {axis!r} is empty; give at least one value")
        if isinstance(grid, list) and not grid:
            raise ValueError("a list of grids needs at least one grid")
        return grid

    @property
    def grids(self) -> list[dict[str, list[Any]]]:
        return self.grid if isinstance(self.grid, list) else [self.grid]


@dataclass
class Study:
    """A validated study, ready to expand into runs."""

    spec: StudySpec
    source: str
    grids: list[dict[str, list[Any]]] = field(default_factory=lambda: [{}])  # path -> values
    # per grid, point fields its runs carry beside their axes (an IsoFLOP cell's budget)
    marks: list[dict[str, Any]] = field(default_factory=list)
    design_cells: list[Any] = field(default_factory=list)  # design.IsoflopCell of each cell
    quick: bool = False  # its `quick:` overrides applied (results go to their own directory)
    # continuous nuisance axes (path -> range) whose values a tpe search chooses; the grids
    # hold each at the range's middle until with_trials() puts the chosen values there
    ranges: dict[str, ValueRange] = field(default_factory=dict)
    # Each distinct section setting validated once: (section, settings) -> resolved section.
    _memo: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def axes(self) -> dict[str, list[Any]]:
        """Every axis of every grid (dotted path -> the values it takes anywhere)."""
        union: dict[str, list[Any]] = {}
        for grid in self.grids:
            for path, values in grid.items():
                union.setdefault(path, [])
                union[path] += [v for v in values if v not in union[path]]
        return union

    @property
    def name(self) -> str:
        return self.spec.name

    def nuisance_labels(self) -> list[str]:
        """Labels of the axes tuned per shape; every other axis is scientific."""
        labels = self.axis_labels()
        return [labels.get(name, name) for name in self.spec.nuisance]

    @property
    def evaluations(self) -> list[tuple[str, dict[str, Any]]]:
        """(evaluation id, resolved evaluator config) of every ``evaluations`` setting."""
        return [(eval_id, config) for eval_id, config, _ in self._evaluation_entries]

    @property
    def evaluation_tune(self) -> dict[str, list[str]]:
        """Evaluation id -> the settings of its entry tuned per shape on validation."""
        return {eval_id: tune for eval_id, _, tune in self._evaluation_entries if tune}

    @cached_property
    def _evaluation_entries(self) -> list[tuple[str, dict[str, Any], list[str]]]:
        out: list[tuple[str, dict[str, Any], list[str]]] = []
        for i, block in enumerate(self.spec.evaluations):
            block = {"name": block} if isinstance(block, str) else dict(block)
            name = block.pop("name", None)
            tune = block.pop("tune", [])
            try:
                plugin = FAMILIES["evaluator"].get(name)
            except UnknownNameError as exc:
                raise StudyError(self.source, f"evaluations[{i}].name", str(exc)) from None
            if isinstance(tune, str):
                tune = [tune]
            for j, t in enumerate(tune if isinstance(tune, list) else [tune]):
                if t not in block or not isinstance(block[t], list):
                    raise StudyError(self.source, f"evaluations[{i}].tune[{j}]",
                                     f"{t!r} is not a setting of this entry given as a list of "
                                     f"values to tune over (e.g. {t}: [10, 20, 50])")
            keys = list(block)
            values = [v if isinstance(v, list) else [v] for v in block.values()]
            for combo in itertools.product(*values):
                try:
                    config = plugin.Config.model_validate(dict(zip(keys, combo)))
                except ValidationError as exc:
                    raise _from_validation(self.source, f"evaluations[{i}]", exc, plugin.Config,
                                           also_allowed=("name", "tune")) from None
                resolved = {"name": name, **config.model_dump(mode="json")}
                entry = (run_id(resolved), resolved, list(tune))
                if all(entry[0] != e[0] for e in out):
                    out.append(entry)
        return out

    def design_summary(self) -> dict[str, Any] | None:
        """The IsoFLOP design as the analysis reads it: budgets and the labels of its size and
        data axes (None without a design)."""
        if not self.design_cells:
            return None
        design, labels = self.spec.design.isoflop, self.axis_labels()
        (size_axis, _), = design.sizes.items()
        size_path = _axis_path(self.spec, size_axis, self.source, "design.isoflop.sizes")
        data_path = _axis_path(self.spec, design.data, self.source, "design.isoflop.data")
        return {"budgets": design.budgets, "size": labels[size_path], "data": labels[data_path]}

    def axis_labels(self) -> dict[str, str]:
        """Short column names: the last path segment unless two axes share it."""
        # A plug-in's name axis (method.name) is labelled by its section (method).
        last = [p.split(".")[0] if p in ("task.name", "model.name", "method.name")
                else p.rsplit(".", 1)[-1] for p in self.axes]
        return {p: (s if last.count(s) == 1 else p) for p, s in zip(self.axes, last)}

    @cached_property
    def runs(self) -> list[RunSpec]:
        """Every cell in a deterministic order: axes in file order, seeds innermost."""
        runs = list(self._grid_runs())
        if self.spec.baselines:
            runs = [RunSpec(r.run_id, r.config, r.point | {"matched_to": None}) for r in runs]
            runs += self._baseline_runs(runs, self.axis_labels())
        return runs

    def with_trials(self, trials: Mapping[str, list[dict[str, float]]]) -> Study:
        """This tpe study with the values a search chose: ``trials`` maps each shape (the
        key of a held run's point, :func:`scalelab.search.shape_key`) to its trials (range
        label -> value). Each shape becomes a grid of its own, so its runs are ordinary runs
        whose ids are hashes of their configs."""
        from .search import shape_key

        labels = self.axis_labels()
        nuisance = [labels[p] for p in self.ranges]
        grids, marks, done = [], [], set()
        for g, grid in enumerate(self.grids):
            for values in itertools.product(*grid.values()):
                point = {labels[p]: v for p, v in zip(grid, values)}
                shape = shape_key(point, nuisance)
                if (g, shape) in done or not trials.get(shape):
                    continue
                done.add((g, shape))
                fixed = {p: [v] for p, v in zip(grid, values) if p not in self.ranges}
                for trial in trials[shape]:
                    grids.append(fixed | {p: [trial[labels[p]]] for p in self.ranges})
                    marks.append(self.marks[g] if self.marks else {})
        return dataclasses.replace(self, grids=grids, marks=marks if self.marks else [],
                                   _memo=self._memo)

    def iter_runs(self) -> Iterator[RunSpec]:
        """The runs of :attr:`runs`, in its order, resolved one at a time and not kept: a
        study of a million cells is listed in little memory. (The list itself when it is
        built already, or when the study has baselines, which are derived from all runs.)"""
        if "runs" in self.__dict__ or self.spec.baselines:
            yield from self.runs
        else:
            yield from self._grid_runs()

    def _grid_runs(self) -> Iterator[RunSpec]:
        labels = self.axis_labels()
        seen = set()
        for g, grid in enumerate(self.grids):
            marks = self.marks[g] if self.marks else {}
            paths = list(grid)
            for values in itertools.product(*grid.values()):
                assignment = dict(zip(paths, values))
                for seed in self.spec.seeds:
                    where = "grid: cell " + ", ".join(f"{labels[p]}={v!r}"
                                                      for p, v in assignment.items())
                    config = resolve(self.spec, assignment, seed, self.source, where,
                                     self._memo)
                    rid = run_id(config)
                    if rid in seen:  # the same cell in two grids of a list
                        continue
                    seen.add(rid)
                    point = {label: assignment.get(p) for p, label in labels.items()}
                    yield RunSpec(rid, config, point | marks | {"seed": seed})

    def method_declarations(self) -> dict[str, dict[str, Any]]:
        """What each method of the study declares for the analysis and the report (its
        comparison role and trace curves), recorded with the results."""
        names = sorted({r.config["method"]["name"] for r in self.runs})
        return {name: {"role": cls.comparison_role,
                       "traces": {k: list(v) for k, v in cls.traces.items()}}
                for name in names for cls in [FAMILIES["method"].get(name)]}

    def _baseline_runs(self, runs: list[RunSpec], labels: dict[str, str]) -> list[RunSpec]:
        """The ``baselines`` of every selection run, each once (same seed, same everything
        else). A point names the baseline's method, the rate it matches and, for a
        compute-matched run, whether the runs it matches score each batch (``matched_to``:
        ``scoring`` or ``non-scoring`` selection); one such run serves every method alike."""
        seen = {r.run_id for r in runs}
        method_label = labels.get("method.name", "method")
        rate_label = labels.get("method.target_rate", "target_rate")
        extra = []
        for run in runs:
            plugin = FAMILIES["method"].get(run.config["method"]["name"])
            for _, method, rate, matched_to in plugin.baselines(run.config["method"],
                                                                self.spec.baselines):
                config = {**run.config, "method": method}
                rid = run_id(config)
                if rid in seen:
                    continue
                seen.add(rid)
                point = {k: (None if p.startswith("method.") else run.point[k])
                         for p, k in labels.items()} | {"seed": run.point["seed"]}
                point |= {method_label: method["name"], rate_label: rate,
                          "matched_to": matched_to}
                extra.append(RunSpec(rid, config, point))
        return extra


# ---------------------------------------------------------------------------- loading


def load_study(
    path: str | Path, overrides: Sequence[str] = (), quick: bool = False
) -> Study:
    """Read, override and validate a study file; raises :class:`StudyError` on bad input."""
    source = str(path)
    raw = _read_yaml(Path(path))
    for section in PLUGIN_SECTIONS:
        if isinstance(raw.get(section), str):
            raw[section] = {"name": raw[section]}
    if quick:
        block = raw.get("quick") or {}
        if not isinstance(block, dict):
            raise StudyError(source, "quick", "must be a mapping of settings to override")
        if not block:
            raise StudyError(source, "quick", "--quick needs a `quick:` block in the study")
        raw = deep_merge(raw, block)
    for text in overrides:
        raw = apply_override(raw, text)
    try:
        study = validate_study(raw, source)
    except RecursionError:
        raise StudyError(source, "", TOO_DEEP) from None
    study.quick = quick
    return study


#: Study keys renamed so that one concept has one word (old name -> new name); the old
#: names keep working, with a one-line notice.
RENAMED_KEYS = {"batch_runs": "stack_runs", "batch_memory_mb": "stack_memory_mb",
                "batch_min_runs": "stack_min_runs", "batch_pad": "stack_pad",
                "track": "trackers"}


def _renamed_keys(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``raw`` with old key names replaced by the new ones (a notice for each; an error when
    both spellings are given, since which one was meant is unknowable)."""
    raw = dict(raw)
    for old, new in RENAMED_KEYS.items():
        if old not in raw:
            continue
        if new in raw:
            raise StudyError(source, old, f"is the old name of `{new}`, which is also set; "
                                          f"keep only `{new}`")
        raw[new] = raw.pop(old)
        warnings.warn(f"{source}: `{old}` is now called `{new}` (the old name still works)",
                      RenamedSetting, stacklevel=3)
    return raw


def validate_study(raw: Mapping[str, Any], source: str = "<study>") -> Study:
    """Validate a study given as a mapping (the shape of the YAML file)."""
    raw = _renamed_keys(raw, source)
    _refuse_bools(StudySpec, raw, source, "", "")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise _from_validation(source, "", exc, StudySpec) from None
    for section in PLUGIN_SECTIONS:
        name = getattr(spec, section).get("name")
        if not isinstance(name, str):
            allowed = ", ".join(FAMILIES[section].names())
            what = "required" if name is None else "must be a name"
            raise StudyError(source, f"{section}.name", f"{what} (one of: {allowed})")
        try:
            FAMILIES[section].get(name)
        except UnknownNameError as exc:
            raise StudyError(source, f"{section}.name", str(exc)) from None
    for name, settings in spec.trackers.items():
        try:
            tracker = FAMILIES["tracker"].get(name)
            tracker.Config.model_validate(settings)
        except UnknownNameError as exc:
            raise StudyError(source, f"trackers.{name}", str(exc)) from None
        except ValidationError as exc:
            raise _from_validation(source, f"trackers.{name}", exc, tracker.Config) from None
    data_kind = FAMILIES["task"].get(spec.task["name"]).data_kind
    learns = FAMILIES["model"].get(spec.model["name"]).data_kinds
    if data_kind not in learns:
        raise StudyError(source, "model.name",
                         f"model {spec.model['name']} learns {' or '.join(learns)} data; task "
                         f"{spec.task['name']} provides {data_kind} data")
    if spec.evaluations and not FAMILIES["task"].get(spec.task["name"]).in_memory:
        raise StudyError(source, "evaluations", f"re-scoring checkpoints is not yet supported "
                         f"on streamed {spec.task['name']} data (in-memory tasks only); each "
                         "run's own test metrics and per-class accuracy are recorded")
    if data_kind != "classification" and spec.train.get("augment"):
        raise StudyError(source, "train.augment", f"only for image or signal inputs; task "
                         f"{spec.task['name']} provides {data_kind} data")
    planned = sum(math.prod(spec.nuisance_search.trials if isinstance(v, ValueRange) else len(v)
                            for v in grid.values()) for grid in spec.grids) * len(spec.seeds)
    if planned > spec.max_runs:
        raise StudyError(source, "grid", f"{planned:,} runs (cells x seeds) exceed max_runs = "
                                         f"{spec.max_runs:,}; set `max_runs: {planned}` in the "
                                         "study to expand them all")
    grids, ranges = [], {}
    for g, grid in enumerate(spec.grids):
        prefix = f"grid[{g}]" if isinstance(spec.grid, list) else "grid"
        axes = {_axis_path(spec, axis, source, prefix): values for axis, values in grid.items()}
        if len(axes) != len(grid):
            raise StudyError(source, prefix, "two axes name the same setting")
        axes = _ranges_held(spec, axes, ranges, source, prefix)
        grids.append(axes)
        # The base config (first value of every axis), then every axis value on its own, so
        # an error names the axis and value that caused it; then every cell.
        first = {p: v[0] for p, v in axes.items()}
        try:
            resolve(spec, first, spec.seeds[0], source, "")
        except StudyError as exc:
            if exc.field in axes:  # the first value of an axis, not the base setting, is wrong
                raise StudyError(source, f"{prefix}.{exc.field}[0]", exc.message) from None
            raise
        for path, values in axes.items():
            for i, value in enumerate(values[1:], start=1):
                resolve(spec, first | {path: value}, spec.seeds[0], source,
                        f"{prefix}.{path}[{i}]")
    study = Study(spec, source, grids, ranges=ranges)
    if spec.design:
        study.grids, study.marks, study.design_cells = _isoflop_grids(spec, grids, source)
    labels = study.axis_labels()
    for i, name in enumerate(spec.nuisance):
        if name not in study.axes and name not in labels.values():
            raise StudyError(source, f"nuisance[{i}]",
                             f"{name!r} is not a grid axis (axes: {', '.join(labels.values())})")
    _check_search(study)
    _ = study.evaluations
    _check_runs(study)
    return study


def _isoflop_grids(spec: StudySpec, grids: list[dict[str, list[Any]]], source: str
                   ) -> tuple[list[dict[str, list[Any]]], list[dict[str, Any]], list[Any]]:
    """The study's grids crossed with its IsoFLOP cells (one grid per cell, each marked with
    its budget): the grid keeps the other axes (nuisance settings such as lr)."""
    from .design import DATA_AXES, isoflop_cells

    design = spec.design.isoflop
    (size_axis, sizes), = design.sizes.items()
    size_path = _axis_path(spec, size_axis, source, "design.isoflop.sizes")
    data_path = _axis_path(spec, design.data, source, "design.isoflop.data")
    if data_path not in DATA_AXES:
        raise StudyError(source, "design.isoflop.data", f"{design.data!r} cannot set a data "
                         f"amount (allowed: {', '.join(DATA_AXES)})")
    if data_path == "task.num_train" and spec.train.get("epochs") is None:
        raise StudyError(source, "design.isoflop.data", "task.num_train sets the data only "
                         "with a train.epochs budget (or use train.max_steps)")
    for grid in grids:
        if {size_path, data_path} & set(grid):
            raise StudyError(source, "grid", f"{size_path} and {data_path} are set by "
                             "design.isoflop; remove them from the grid")
    base = {p: v[0] for p, v in grids[0].items()}

    def config_at(size: Any, data: int | None) -> dict[str, Any]:
        where = f"design.isoflop: {size_axis}={size!r}"
        cell = {size_path: size} if data is None else {size_path: size, data_path: data}
        return resolve(spec, base | cell, spec.seeds[0], source, where)

    cells = isoflop_cells(design.budgets, sizes, data_path, config_at, source)
    out = [({**grid, size_path: [c.size], data_path: [c.data]}, {"budget": c.budget})
           for c in cells for grid in grids]
    return [g for g, _ in out], [m for _, m in out], cells


#: A validated study keeps its resolved runs when it has at most this many; a larger one
#: resolves them again, one at a time, wherever they are used (see :meth:`Study.iter_runs`).
KEEP_RUNS = 10_000


def _ranges_held(spec: StudySpec, axes: dict[str, Any], ranges: dict[str, ValueRange],
                 source: str, prefix: str) -> dict[str, list[Any]]:
    """A grid's axes with every range held at its middle (its values come from the search),
    each range recorded in ``ranges``; a range is refused where no tpe search chooses them."""
    held = {}
    for path, values in axes.items():
        if not isinstance(values, ValueRange):
            held[path] = values
            continue
        if spec.nuisance_search.method != "tpe":
            raise StudyError(source, f"{prefix}.{path}", "a range of values needs a search that "
                             "chooses them: set `nuisance_search: {method: tpe, trials: 8}` "
                             "(or give a list of values)")
        ranges[path] = values
        held[path] = [values.middle]
    return held


def _check_search(study: Study) -> None:
    """What each nuisance search needs of the study."""
    spec, source = study.spec, study.source
    method = spec.nuisance_search.method
    if method == "halving" and not spec.nuisance:
        raise StudyError(source, "nuisance_search.method", "halving searches the nuisance axes "
                         "of each shape, and this study has none: list them under `nuisance:`")
    if method != "tpe":
        return
    if not study.ranges:
        raise StudyError(source, "nuisance_search.method", "tpe chooses values from ranges: "
                         "give a nuisance axis as {log_range: [low, high]} (or {range: ...})")
    labels = study.axis_labels()
    tuned = {labels.get(name, name) for name in spec.nuisance} | set(spec.nuisance)
    for path in study.axes:
        is_range = path in study.ranges
        if is_range != (path in tuned or labels[path] in tuned):
            raise StudyError(source, f"grid.{labels[path]}",
                             "under tpe every nuisance axis is a range and every range a "
                             "nuisance axis (list it under `nuisance:`)" if is_range else
                             "under tpe every nuisance axis is a range: give it as "
                             "{log_range: [low, high]}")
    if spec.design:
        raise StudyError(source, "nuisance_search.method", "tpe with an IsoFLOP design is not "
                         "supported yet; use a grid of values (nuisance_search: grid or halving)")


def _check_runs(study: Study) -> None:
    """Resolve every cell now, so that a bad combination fails before anything runs, and
    have each distinct task config check its data files, so that a missing or unreadable
    file is one line before anything is written instead of a failed run for every cell.
    Streamed: the runs are kept only when there are few."""
    kept: list[RunSpec] | None = []
    checked = set()
    for run in study.iter_runs():
        if kept is not None:
            kept.append(run)
            if len(kept) > KEEP_RUNS:
                kept = None
        key = repr(run.config["task"])
        if key in checked:
            continue
        checked.add(key)
        settings = dict(run.config["task"])
        task = FAMILIES["task"].get(settings.pop("name"))
        try:
            task(task.Config.model_validate(settings)).check()
        except ScalelabError as exc:
            raise StudyError(study.source, "", str(exc)) from None
    if kept is not None and "runs" not in study.__dict__:
        study.__dict__["runs"] = kept  # what the cached property would have built


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would silently keep
    the last one, so a study would not mean what its author reads)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # the base loader refuses an unhashable key with its own message
                break
            if key in seen:
                raise _DuplicateKey(str(key), f"duplicate key {key!r} (lines "
                                              f"{seen[key].start_mark.line + 1} and "
                                              f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node
        return super().construct_mapping(node, deep)


TOO_DEEP = "nested too deeply to be a study (settings are a few levels deep)"


def _read_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StudyError(source, "", "no such study file") from None
    except IsADirectoryError:
        raise StudyError(source, "", "is a folder, not a study file") from None
    except OSError as exc:
        raise StudyError(source, "", f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise StudyError(source, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line "
                                     f"{line}); save the study file as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise StudyError(source, "", TOO_DEEP) from None
    except _DuplicateKey as exc:
        raise StudyError(source, exc.path, str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(source, "", f"not valid YAML: {problem}{where}") from None
    if not isinstance(raw, dict):
        raise StudyError(source, "", "a study must be a YAML mapping (name:, task:, model:, ...)")
    return raw


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(raw: Mapping[str, Any], text: str) -> dict[str, Any]:
    """Apply one ``--set key=value``; the value is parsed as YAML (``[16, 32]``, ``1e-3``)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise StudyError("--set", text, "expected key=value, e.g. train.lr=0.01")
    try:
        value = yaml.safe_load(value_text)
    except RecursionError:
        raise StudyError("--set", key, TOO_DEEP) from None
    except yaml.YAMLError:
        raise StudyError("--set", key, f"value {value_text!r} is not valid YAML") from None
    if key.startswith("grid."):
        # Axis names contain dots themselves: grid.model.width is the axis "model.width", and
        # it replaces an axis the file spells as bare "width" rather than adding a twin.
        axis = key[5:]
        if isinstance(raw.get("grid"), list):
            raise StudyError("--set", key, "this study's grid is a list of grids; set "
                                           "grid=[...] whole, or edit the file")
        grid = {k: v for k, v in (raw.get("grid") or {}).items()
                if not _same_axis_spelling(k, axis)}
        return deep_merge({**raw, "grid": grid}, {"grid": {axis: value}})
    # The value replaces what is at the path (``--set grid={}`` empties the grid).
    updated = copy.deepcopy(dict(raw))
    node = updated
    *parents, leaf = key.split(".")
    for k in parents:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[leaf] = value
    return updated


def _same_axis_spelling(a: str, b: str) -> bool:
    """``width`` and ``model.width`` name one axis; ``task.x`` and ``model.x`` do not."""
    if a == b:
        return True
    if "." in a and "." in b:
        return False
    return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


# ------------------------------------------------------------------------- resolution


def resolve(
    spec: StudySpec,
    assignment: Mapping[str, Any],
    seed: int,
    source: str,
    where: str,
    memo: dict[tuple[str, str], Any] | None = None,
) -> dict[str, Any]:
    """The fully resolved config of one run: every plug-in default filled in.

    ``where`` names the grid value or cell being resolved, for error messages. ``memo``
    keeps each distinct section's validated settings, so a grid's many cells validate each
    setting once (a study's runs share it).
    """
    memo = {} if memo is None else memo
    sections: dict[str, dict[str, Any]] = {s: getattr(spec, s) for s in SECTIONS}
    for path, value in assignment.items():
        _set_path(sections, path, value)  # copies along the path: the spec is left as it is
    resolved: dict[str, Any] = {}
    for section in PLUGIN_SECTIONS:
        key = (section, repr(sections[section]))
        if key not in memo:
            settings = dict(sections[section])
            name = settings.pop("name")
            try:
                plugin = FAMILIES[section].get(name)
            except UnknownNameError as exc:
                raise StudyError(source, where or f"{section}.name", str(exc)) from None
            _refuse_bools(plugin.Config, settings, source, section, where)
            try:
                config = plugin.Config.model_validate(settings)
            except ValidationError as exc:
                raise _from_validation(
                    source, section, exc, plugin.Config, where, also_allowed=("name",)
                ) from None
            memo[key] = {"name": name, **config.identity()}
        resolved[section] = _fresh(memo[key])
    key = ("train", repr(sections["train"]))
    if key not in memo:
        _refuse_bools(TrainConfig, sections["train"], source, "train", where)
        try:
            config = TrainConfig.model_validate(sections["train"])
        except ValidationError as exc:
            raise _from_validation(source, "train", exc, TrainConfig, where) from None
        memo[key] = (config, config.identity())
    train, identity = memo[key]
    resolved["train"] = _fresh(identity)
    if resolved["model"].get("parametrization") == "mup" and train.optimizer == "muon":
        raise StudyError(source, where or "model.parametrization",
                         "mup scales the learning rates of sgd, adam and adamw; muon has its "
                         "own width rule: use parametrization: standard with muon")
    if getattr(FAMILIES["method"].get(resolved["method"]["name"]), "epoch_budget", False) \
            and train.epochs is None:
        raise StudyError(source, where or "train.epochs",
                         f"method {resolved['method']['name']} takes fewer steps per epoch than "
                         "full batches would, so its budget is a number of epochs: set "
                         "train.epochs instead of max_steps")
    if resolved["task"].get("num_val") == 0 and (train.early_stopping or train.restore_best):
        raise StudyError(source, where or "train.restore_best",
                         "task.num_val: 0 trains without a validation split, so nothing can "
                         "pick the best weights or stop early: set train.restore_best: false "
                         "and leave out early_stopping")
    resolved["seed"] = seed
    return resolved


def _set_path(sections: dict[str, dict[str, Any]], path: str, value: Any) -> None:
    """Set ``path`` in ``sections`` (a dict of its own), copying every mapping on the way, so
    the mappings it was built from are never changed."""
    *parents, leaf = path.split(".")
    node: dict[str, Any] = sections
    for part in parents:
        child = node.get(part)
        child = node[part] = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value


def _fresh(section: dict[str, Any]) -> dict[str, Any]:
    """A copy of a resolved section that no other run shares (nested values copied too)."""
    if not any(isinstance(v, dict | list) for v in section.values()):
        return dict(section)
    return copy.deepcopy(section)


def _refuse_bools(model: type[BaseModel], data: Any, source: str, section: str,
                  where: str) -> None:
    """Refuse ``true``/``false`` given to a setting that takes a number: pydantic would read
    it as 1 or 0 (``--set grid.width=[true]`` would train width 1 and record ``True``)."""
    found = _bool_for_number(model, data, ())
    if found is None:
        return
    loc, value = found
    field_ = ".".join(p for p in (section, *loc) if p)
    message = (f"expected a number, got {str(value).lower()} (a yes/no value, which would "
               f"be read as {int(value)})")
    if where.startswith("grid:"):
        raise StudyError(source, where, f"{field_}: {message}")
    raise StudyError(source, where or field_, message)


def _bool_for_number(model: type[BaseModel], data: Any, loc: tuple[str, ...]
                     ) -> tuple[tuple[str, ...], bool] | None:
    """(where, value) of the first boolean in ``data`` given to a field of ``model`` that
    takes numbers but not booleans, or None."""
    if not isinstance(data, Mapping):
        return None
    for key, value in data.items():
        info = model.model_fields.get(key) if isinstance(key, str) else None
        if info is not None:
            found = _bool_in(info.annotation, value, (*loc, key))
            if found is not None:
                return found
    return None


def _bool_in(annotation: Any, value: Any, loc: tuple[str, ...]
             ) -> tuple[tuple[str, ...], bool] | None:
    if isinstance(value, bool):
        kinds = _kinds(annotation)
        return (loc, value) if "number" in kinds and "bool" not in kinds else None
    if isinstance(value, list):
        for item in _item_annotations(annotation):
            for i, v in enumerate(value):
                found = _bool_in(item, v, (*loc, str(i)))
                if found is not None:
                    return found
        return None
    nested = _model_in(annotation)
    return _bool_for_number(nested, value, loc) if nested is not None else None


def _kinds(annotation: Any) -> set[str]:
    """What an annotation accepts, as far as this check cares: "number", "bool", "other"."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        args = typing.get_args(annotation)
        return ({"bool"} if any(isinstance(a, bool) for a in args) else set()) | \
            ({"number"} if any(isinstance(a, int | float) and not isinstance(a, bool)
                               for a in args) else set()) | {"other"}
    if annotation is bool or annotation is Any or annotation is object:
        return {"bool"}
    if annotation in (int, float):
        return {"number"}
    return {"other"}


def _item_annotations(annotation: Any) -> list[Any]:
    """The item annotations of the list types in ``annotation`` (``list[int] | None``)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _item_annotations(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [i for a in typing.get_args(annotation) for i in _item_annotations(a)]
    if origin in (list, Sequence, tuple) and typing.get_args(annotation):
        return [typing.get_args(annotation)[0]]
    return []


def _section_fields(spec: StudySpec, section: str) -> dict[str, Any]:
    if section == "train":
        return TrainConfig.model_fields
    name = getattr(spec, section).get("name")
    if name not in FAMILIES[section]:
        return {}
    return {"name": None, **FAMILIES[section].get(name).Config.model_fields}


def _axis_path(spec: StudySpec, axis: str, source: str, prefix: str = "grid") -> str:
    """Full dotted path of a grid axis; a bare name (``width``) is looked up in every section."""
    head, dot, _ = axis.partition(".")
    if dot:
        if head not in SECTIONS:
            raise StudyError(source, f"{prefix}.{axis}",
                             f"unknown section {head!r} (allowed: {', '.join(SECTIONS)})")
        return axis
    owners = [s for s in SECTIONS if axis in _section_fields(spec, s)]
    if len(owners) == 1:
        return f"{owners[0]}.{axis}"
    if owners:
        paths = " or ".join(f"{s}.{axis}" for s in owners)
        raise StudyError(source, f"{prefix}.{axis}", f"ambiguous; write {paths}")
    described = ", ".join(
        f"{s} {getattr(spec, s).get('name')}" if s != "train" else "train" for s in SECTIONS
    )
    raise StudyError(source, f"{prefix}.{axis}", f"no setting of that name in {described}")


def _from_validation(
    source: str,
    section: str,
    exc: ValidationError,
    model: type[BaseModel],
    where: str = "",
    also_allowed: tuple[str, ...] = (),
) -> StudyError:
    """One-line StudyError from the first pydantic error, with the allowed keys for typos.

    ``where`` names a grid value or cell the error came from; the field inside the section
    is then part of the message (for a cell) or implied by the axis (for a value).
    """
    errors = exc.errors()
    err = errors[0]
    loc = _plain_loc(err["loc"])
    # Errors of the other alternatives of a union (a grid is a mapping or a list of them)
    # say the same thing about the same value: count only errors of other fields.
    others = {_plain_loc(e["loc"]) for e in errors[1:]} - {loc}
    others = {o for o in others if o[:1] != loc[:1] or len(o) > len(loc)} if loc else others
    if err["type"] == "extra_forbidden":
        keys = _allowed_keys(model, loc[:-1])
        allowed = ", ".join([*also_allowed, *keys] if len(loc) == 1 else keys)
        near = difflib.get_close_matches(loc[-1], [*also_allowed, *keys], n=1, cutoff=0.6)
        message = (f"unknown key; did you mean {near[0]}? " if near else "unknown key ") + \
            f"(allowed: {allowed})"
    elif err["type"] == "missing":
        message = "required"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if loc and not isinstance(err.get("input"), dict | list):
            message += f" (got {err.get('input')!r})"
    if others:
        message += f" (+{len(others)} more)"
    field = ".".join(p for p in (section, *loc) if p)
    if where.startswith("grid:"):
        return StudyError(source, where, f"{field}: {message}")
    return StudyError(source, where or field, message)


def _plain_loc(loc: Sequence[Any]) -> tuple[str, ...]:
    """A pydantic error location without the tags it adds for union alternatives and
    validators (``dict[str,list[any]]``, ``function-after[...]``), which mean nothing to
    the person who wrote the study."""
    return tuple(str(p) for p in loc if not (isinstance(p, str) and (
        "[" in p or p in ("int", "float", "str", "bool", "list", "dict", "none"))))


def _allowed_keys(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    for part in loc:
        info = model.model_fields.get(part)
        nested = _model_in(info.annotation) if info else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
