"""The one training loop: budget, cadence, running loss, evaluation, curves, divergence, early
stopping and best weights, for one run or for several trained together.

What differs between trainings is a :class:`Strategy`: how a batch is drawn (examples, token
windows, one draw per stacked run), the step itself (forward, the method's loss, backward,
update) and evaluation. The loop sees ``runs`` parallel runs (one, except for stacked
groups); each keeps its own curves, best weights, patience and end. What later features plug
in is a :class:`Hooks`: a per-batch transform, a loss criterion, post-step hooks and
callbacks, all doing nothing by default.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ScalelabError
from ..records import COMPLETED, DIVERGED, PRUNED, PRUNED_RUNG, RunResult
from ..spec import TrainConfig


class Callback:
    """Receives per-step and per-evaluation numbers (trackers, energy meters); do-nothing
    defaults. ``losses`` is the step's (runs,) loss tensor on the run's device: reading it
    synchronises the device, so a callback that needs it every step pays for that."""

    def on_step(self, step: int, losses: torch.Tensor) -> None:
        """After every optimizer step."""

    def on_eval(self, step: int, run: int, values: dict[str, float]) -> None:
        """After each evaluation of run ``run`` (index in the group), with its curve values."""


@dataclass
class Hooks:
    """Extension points of the loop; the defaults leave training as it is.

    - ``batch_transform(batch, step) -> (x, y)``: applied on the device to every training
      :class:`Batch` after it is drawn (augmentation); stacked groups pass (runs, batch, ...)
      inputs and (runs, batch) rows.
    - ``criterion(logits, targets, reduction=...)``: the training loss, with the signature of
      ``F.cross_entropy`` (label smoothing is ``partial(F.cross_entropy, label_smoothing=s)``);
      strategies take it when built; evaluation always scores plain cross-entropy.
    - ``post_step(step, tensors)``: after each optimizer update, with the trained tensors
      (a model's float state, or a stacked group's one (runs, all parameters) tensor), for
      weight averaging such as EMA or lookahead; a hook with a ``begin(tensors,
      total_steps)`` method is first shown the starting weights and the budget.
    - ``callbacks``: :class:`Callback` objects.
    - ``rungs``: a halving search's gate (:class:`scalelab.search.RungGate`): ``steps(total,
      eval_every)`` maps the steps of its rungs (on the evaluation cadence) to rung numbers;
      after the evaluation at one, ``decide(rung, step, {run: best val loss})`` names the
      runs that stop there, ``pruned``.
    """

    batch_transform: Callable[[Batch, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    criterion: Callable[..., torch.Tensor] = F.cross_entropy
    post_step: list[Callable[[int, list[torch.Tensor]], None]] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    rungs: Any = None


@dataclass
class Batch:
    """One drawn training batch: inputs, targets, the training rows they are (None for token
    windows), the learning-rate progress in steps, whether it is the budget's last, and the
    epochs completed before it (2.5: halfway through the third)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None
    progress: int
    last: bool
    epoch: float = 0.0


class Strategy(ABC):
    """What one kind of training does at each point of the loop, and what each of its runs
    reports after it."""

    #: Runs trained together; the loop keeps one :class:`RunState` per run.
    runs: int = 1
    #: The step budget (the learning-rate schedule is built for it).
    total_steps: int
    #: The (first) run's training settings, at the batch size it trains with.
    cfg: TrainConfig

    @abstractmethod
    def draw(self, step: int) -> Batch:
        """The batch of step ``step`` (from 1)."""

    @abstractmethod
    def step(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward, loss, backward and update: the (runs,) detached losses, and values worth
        a curve at every step (a selection method's rate), for every run."""

    @abstractmethod
    def parameters(self) -> list[torch.Tensor]:
        """The trained state post-step hooks may read and change in place: a model's
        float tensors (parameters and running statistics), a stacked group's one tensor."""

    @abstractmethod
    def lrs(self, batch: Batch) -> list[float]:
        """Each run's learning rate at this batch, for the ``lr`` curve."""

    @abstractmethod
    def evaluate(self) -> tuple[list[dict[str, float]], int]:
        """Validation curve values of each run (``val_loss`` first; none without a
        validation split) and the units scored."""

    @abstractmethod
    def snapshot(self, run: int) -> dict[str, torch.Tensor]:
        """A copy of run ``run``'s current weights (its best so far)."""

    @abstractmethod
    def account(self, result: RunResult, run: int, outcome: Outcome) -> None:
        """Add to ``result`` what run ``run`` trained and what it cost (steps, samples,
        parameters, FLOPs, time)."""

    @abstractmethod
    def finalize(self, result: RunResult, run: int, outcome: Outcome, checkpoint: bool) -> None:
        """Add run ``run``'s final metrics (its last and best weights on every split) and,
        with ``checkpoint``, its weights' bytes."""

    def stop(self, run: int, diverged: bool) -> None:  # noqa: B027  (a do-nothing default)
        """Run ``run`` trains no further (a stacked group keeps its mates going)."""

    def drop(self, run: int) -> None:  # noqa: B027  (a do-nothing default)
        """Run ``run``, stopped, will be read again only for its final weights: a stacked
        group may stop computing it."""

    def synchronize(self) -> None:  # noqa: B027  (a do-nothing default)
        """Wait for the device's queued work (so the clock times steps and evaluations
        apart on a GPU)."""

    def check_every(self) -> int | None:
        """Steps between finiteness checks of the running loss (each costs a device sync);
        None: only at evaluations."""
        return 1

    def mean(self, sums: list[float], count: int) -> list[float]:
        """Mean training losses from per-run sums over ``count`` steps (a distributed job
        combines its ranks' sums here)."""
        return [s / count for s in sums]


@dataclass
class RunState:
    """One run's progress: its curves, best validation loss and weights, patience, end."""

    status: str = COMPLETED
    curves: list[tuple[int, str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = 0
    best_state: dict | None = None
    evals_without_gain: int = 0
    stopped_early: bool = False
    end_step: int | None = None   # the step it stopped at (early or diverged)
    evaluated: int = 0            # units (samples, tokens) scored in evaluations
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.end_step is None

    def steps(self, last: int) -> int:
        return self.end_step if self.end_step is not None else last


@dataclass
class Outcome:
    """What the loop did: the last step reached, each run's state, and the time it took."""

    step: int
    states: list[RunState]
    train_time: float
    eval_time: float

    def steps(self, run: int) -> int:
        """The steps run ``run`` took (fewer than the loop's when it ended early)."""
        return self.states[run].steps(self.step)


def train_loop(strategy: Strategy, cfg: TrainConfig, hooks: Hooks | None = None) -> Outcome:
    """Train until the budget ends, every run has stopped early, or every run diverged."""
    hooks = hooks or Hooks()
    states = [RunState() for _ in range(strategy.runs)]
    total = strategy.total_steps
    check_every = strategy.check_every()
    rung_at = hooks.rungs.steps(total, cfg.eval_every) if hooks.rungs is not None else {}
    running, count, step, eval_time = None, 0, 0, 0.0
    for hook in hooks.post_step:
        if hasattr(hook, "begin"):
            hook.begin(strategy.parameters(), total)
    started = time.perf_counter()
    for step in range(1, total + 1):
        batch = strategy.draw(step)
        if hooks.batch_transform is not None:
            batch.x, batch.y = hooks.batch_transform(batch, step)
        losses, trace = strategy.step(batch, step)
        if hooks.post_step:
            parameters = strategy.parameters()
            for hook in hooks.post_step:
                hook(step, parameters)
        for state in states:
            if trace and state.active:
                state.curves += [(step, name, value) for name, value in trace.items()]
        for callback in hooks.callbacks:
            callback.on_step(step, losses)
        running = losses.clone() if running is None else running.add_(losses)
        count += 1
        # One sync for the whole group; which runs went non-finite only when one did.
        if check_every and step % check_every == 0 and not math.isfinite(running.sum().item()):
            for r in torch.nonzero(~torch.isfinite(running)).flatten().tolist():
                if states[r].active:
                    _end(strategy, states[r], r, step, diverged=True)
                running[r] = 0.0  # ended: its sum no longer counts
            if not any(t.active for t in states):
                break
        if step % cfg.eval_every and not batch.last:
            continue
        strategy.synchronize()
        eval_started = time.perf_counter()
        train_loss = strategy.mean(running.tolist(), count)
        running, count = None, 0
        values, scored = strategy.evaluate()
        lrs = strategy.lrs(batch)
        for r, state in enumerate(states):
            if state.active:
                _observe(strategy, cfg, state, r, step, train_loss[r], values[r], lrs[r],
                         scored, hooks)
        if step in rung_at:
            _rung(strategy, states, hooks, rung_at[step], step)
        eval_time += time.perf_counter() - eval_started
        if batch.last or not any(t.active for t in states):
            break
    strategy.synchronize()
    return Outcome(step, states, time.perf_counter() - started, eval_time)


def _observe(strategy: Strategy, cfg: TrainConfig, state: RunState, r: int, step: int,
             train_loss: float, values: dict[str, float], lr: float, scored: int,
             hooks: Hooks) -> None:
    """Record one evaluation of run ``r``; end it on divergence or when patience runs out."""
    row = {"train_loss": train_loss, **values, "lr": lr}
    state.evaluated += scored
    state.curves += [(step, name, value) for name, value in row.items()]
    for callback in hooks.callbacks:
        callback.on_eval(step, r, row)
    val_loss = values.get("val_loss")
    if not (math.isfinite(train_loss) and (val_loss is None or math.isfinite(val_loss))):
        _end(strategy, state, r, step, diverged=True)
        return
    if val_loss is None:  # no validation split: no best weights, no early stopping
        return
    stopping = cfg.early_stopping
    if val_loss < state.best_loss - (stopping.min_delta if stopping else 0.0):
        state.best_loss, state.best_step, state.evals_without_gain = val_loss, step, 0
        if cfg.restore_best and step != strategy.total_steps:
            state.best_state = strategy.snapshot(r)
        return
    state.evals_without_gain += 1
    if stopping and state.evals_without_gain >= stopping.patience:
        state.stopped_early = True
        _end(strategy, state, r, step, diverged=False)


def _rung(strategy: Strategy, states: list[RunState], hooks: Hooks, rung: int,
          step: int) -> None:
    """Report the live runs' best validation losses at a rung; stop those the search prunes
    (and drop them from a stacked group, unless a hook keeps per-run state by row)."""
    live = {r: state.best_loss for r, state in enumerate(states) if state.active}
    if live and all(math.isinf(loss) for loss in live.values()):
        raise ScalelabError("nuisance_search: halving ranks settings by validation loss, and "
                            "this task has no validation split (set its num_val)")
    by_row = hooks.batch_transform is not None or bool(hooks.post_step)
    for r in sorted(hooks.rungs.decide(rung, step, live)):
        _end(strategy, states[r], r, step, diverged=False)
        if not by_row:
            strategy.drop(r)
        states[r].status = PRUNED
        states[r].metrics.update({PRUNED_RUNG: rung, "budget_steps": strategy.total_steps})


def _end(strategy: Strategy, state: RunState, r: int, step: int, diverged: bool) -> None:
    state.end_step = step
    if diverged:
        state.status = DIVERGED
        state.metrics["diverged_step"] = step
    strategy.stop(r, diverged)
