"""Selection rules: ``ast``, ``topk_loss``, ``selective_backprop_per_batch`` (they score the
batch with a no-grad forward), ``random`` and ``infobatch_per_batch`` (they score nothing);
``selective_backprop`` and ``infobatch`` as published, which take fewer steps over the same
epochs (the first gathers what it selects into full batches, the second prunes whole
epochs); and ``curriculum`` (easy to hard by loss, a share of the rows per epoch).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ...plugin import PluginConfig
from ...registry import methods
from .._base import Method, StepLoss
from ._base import Selection, per_sample_loss, scoring_forward


@methods.register("random")
class Random(Selection):
    """A uniform random subset at the target rate every step (the 'fewer samples' control)."""

    comparison_role = "random"

    def choose(self, model, x, y, index, step):
        order = torch.randperm(len(y), generator=self.generator)[: self.k(len(y))]
        return order.sort().values.to(x.device), None, {}


@methods.register("topk_loss")
class TopKLoss(Selection):
    """The highest-loss fraction of each batch, deterministically, from a no-grad forward (a
    simplification of selective backprop; the reference is ``selective_backprop``)."""

    scores = True

    def choose(self, model, x, y, index, step):
        losses = per_sample_loss(scoring_forward(model, x), y)
        return losses.topk(self.k(len(y))).indices.sort().values, None, {}


@methods.register("selective_backprop_per_batch")
class SelectiveBackpropPerBatch(Selection):
    """Selective backprop's selection rule (below), stepping once per candidate batch on
    what it selects: a variant, not the published method (``selective_backprop``), which
    gathers selected samples into full batches and primes on a first full epoch.

    Each sample of a batch is trained on with probability max(sampling_min, F^beta), F the
    share of the last ``history`` losses (this batch's included) strictly below its loss,
    from a no-grad forward in eval mode. The number trained varies from batch to batch (a
    batch that selects nothing trains its highest-loss sample). With losses spread evenly
    over their history the expected rate is 1 / (beta + 1): ``beta`` defaults to
    1 / target_rate - 1 (target 0.25 -> beta 3, the reference's default)."""

    scores = True

    class Config(Selection.Config):
        beta: float | None = Field(None, gt=0, description="selectivity; default 1/target_rate - 1")
        history: int = Field(  # max_history_len, SelectiveBackpropper.py:39
            1024, ge=2, description="recent losses the percentile is taken over")
        sampling_min: float = Field(  # SelectiveBackpropper.py:37
            0.0, ge=0, le=1, description="lowest probability of training a sample")

    def begin(self, n_train, total_steps, batch, seed):
        super().begin(n_train, total_steps, batch, seed)
        c = self.config
        self.beta = c.beta if c.beta is not None else max(1e-6, 1 / c.target_rate - 1)
        self.seen = torch.empty(0)

    def chance(self, losses: torch.Tensor) -> torch.Tensor:
        """Each loss's probability of being trained on, as the reference computes it: the
        losses join the history first (calculators.py:77-80), then F = the share of the
        history strictly below the loss (hist.py:38-47), P = max(sampling_min, F^beta)."""
        self.seen = torch.cat([self.seen, losses])[-self.config.history:]
        below = torch.searchsorted(self.seen.sort().values, losses)  # strictly less
        return (below / len(self.seen)).pow(self.beta).clamp_min(self.config.sampling_min)

    def sample(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the rows drawn for training, each row's probability): one independent draw per
        sample (selectors.py:104-114) on losses from an eval-mode forward
        (forwardproppers.py:40-44)."""
        losses = per_sample_loss(scoring_forward(model, x, eval_mode=True), y).cpu()
        chance = self.chance(losses)
        keep = (torch.rand(len(y), generator=self.generator) < chance).nonzero().squeeze(1)
        return keep, chance

    def choose(self, model, x, y, index, step):
        keep, chance = self.sample(model, x, y)
        if not len(keep):  # an empty step trains nothing; take the likeliest sample
            keep = chance.argmax().reshape(1)
        return keep.to(x.device), None, {"mean_chance": float(chance.mean())}


@methods.register("selective_backprop")
class SelectiveBackprop(SelectiveBackpropPerBatch):
    """Selective backprop (Jiang et al. 2019) as published (angelajiang/SelectiveBackprop):
    the first ``prime_epochs`` train on every sample, unscored; after them each candidate
    batch is scored and its samples drawn by the rule of ``selective_backprop_per_batch``,
    and the drawn samples queue up until a full batch is drawn, which then takes one step
    (plain mean loss, no learning-rate change; trainer.py:166-183, backproppers.py:45-68).
    An epoch's last candidate trains what is queued as a smaller batch, unless a full one
    is ready. So the steps are full batches and fewer: the budget is ``train.epochs``, the
    schedule follows epoch progress, and the run records its steps against
    ``nominal_steps``. Two departures: a run whose last candidate leaves nothing queued
    ends with a step on that candidate's likeliest sample (the reference takes no step
    there), and with ``train.augment`` a candidate is scored before augmentation (the loop
    augments the batch this returns), where the reference scores the augmented sample."""

    epoch_budget = True

    class Config(SelectiveBackpropPerBatch.Config):
        target_rate: float = Field(0.25, gt=0, le=1, description="expected share of the "
                                   "samples trained after priming; sets beta (0.25: beta 3, "
                                   "examples/train.py:71)")
        # num_images_to_prime = the training set (SelectiveBackpropper.py:33)
        prime_epochs: int = Field(1, ge=0, description="first epochs trained on every "
                                                       "sample, unscored")

    def begin(self, n_train, total_steps, batch, seed):
        super().begin(n_train, total_steps, batch, seed)
        self.queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.scored = 0  # since the last step

    def gather(self, model, x, y, index, *, epoch, flush, last):
        if epoch < self.config.prime_epochs:
            return x, y, index
        keep, chance = self.sample(model, x, y)
        self.scored += len(y)
        self.rates.append(len(keep) / len(y))
        rows = keep.to(x.device)
        self.queue.append((x[rows], y[rows], index[rows]))
        queued = sum(len(part[1]) for part in self.queue)
        if queued >= self.batch or (queued and (flush or last)):
            x, y, index = (torch.cat(parts) for parts in zip(*self.queue))
            self.queue = [(x[self.batch:], y[self.batch:], index[self.batch:])]
            return x[:self.batch], y[:self.batch], index[:self.batch]
        if last:
            top = chance.argmax().reshape(1).to(x.device)
            return x[top], y[top], index[top]
        return None

    def step_loss(self, model, x, y, index, step) -> StepLoss:
        scored, self.scored = self.scored, 0
        return StepLoss(self.criterion(model(x), y), trained=len(y), scored=scored)

    def summary(self):
        return super().summary() | {"nominal_steps": self.total_steps}


SCORING_PRESETS = {  # (loss, intensity, entropy, gradient proxy) weights
    "loss": (1.0, 0.0, 0.0, 0.0),
    "loss+intensity": (0.7, 0.3, 0.0, 0.0),
    "loss+grad": (0.7, 0.0, 0.0, 0.3),
    "loss+entropy": (0.7, 0.0, 0.3, 0.0),
}


#: The reference AST's constants (oluwafemidiakhoa/adaptive-sparse-training at 3e66290c), the
#: defaults of ``controller: reference``; the reference's significance mixes 0.7 loss and 0.3
#: entropy (sundew.py L75).
REFERENCE_AST = {
    "scoring": "loss+entropy",  # sundew.py L75
    "theta_init": 3.0,          # initial_threshold, config.py L30
    "kp": 0.005,                # adapt_kp, config.py L31
    "ki": 0.0001,               # adapt_ki, config.py L32
    "ema": 0.9,                 # 1 - ema_alpha (0.1), config.py L33; sundew.py L118-121
    "theta_min": 0.5,           # sundew.py L128, L136
    "theta_max": 10.0,          # sundew.py L128, L136
    "integral_limit": 100.0,    # sundew.py L130
}


@methods.register("ast")
class AST(Selection):
    """Adaptive Sparse Training: significance above a PI-controlled threshold is trained on.

    Two controllers: ``pi`` (the default), a positional PI on batch-mean-normalised scores
    with a top-k fallback at the target rate; and ``reference``, the reference
    implementation's (sundew.py): raw scores, an incremental PI whose integral decays while
    the threshold sits at a bound, and a fallback to the top max(2, 10%) of the batch.
    """

    scores = True
    traces = {"ema_rate": ("EMA activation rate", "target_rate"),
              "theta": ("threshold θ", None)}

    class Config(Selection.Config):
        later_settings: ClassVar[dict[str, object]] = {"controller": "pi"}

        controller: Literal["pi", "reference"] = Field(
            "pi", description="threshold controller: pi (positional, on batch-normalised "
            "scores) or reference (the reference implementation's, on raw scores; its "
            "constants are then the defaults of the settings below)")
        scoring: Literal["loss", "loss+intensity", "loss+grad", "loss+entropy", "custom"] = Field(
            "loss+intensity", description="significance mix preset; custom uses the w_* weights")
        w_loss: float = Field(0.7, ge=0, description="weight of the normalised loss (custom)")
        w_intensity: float = Field(0.3, ge=0, description="weight of input std (custom)")
        w_entropy: float = Field(0.0, ge=0, description="weight of prediction entropy (custom)")
        w_grad: float = Field(0.0, ge=0, description="weight of |softmax - onehot| (custom)")
        kp: float = Field(2.0, ge=0, description="proportional gain on the rate error")
        ki: float = Field(0.2, ge=0, description="integral gain on the summed rate error")
        ema: float = Field(0.9, ge=0, lt=1, description="EMA factor of the activation rate")
        theta_init: float = Field(1.0, description="starting threshold (pi: the threshold "
                                                   "with zero error and integral)")
        theta_min: float = Field(0.0, description="lower bound of the threshold")
        theta_max: float = Field(10.0, description="upper bound of the threshold")
        integral_limit: float = Field(50.0, gt=0, description="clamp of the integral term")
        min_active: float = Field(
            0.5, gt=0, le=1, description="top-k fallback below this fraction of the target "
                                         "(pi; the reference keeps max(2, 10%) of the batch)")

        @model_validator(mode="before")
        @classmethod
        def _reference_defaults(cls, data: Any) -> Any:
            if isinstance(data, dict) and data.get("controller") == "reference":
                if "min_active" in data:
                    raise ValueError("min_active sets the pi controller's fallback; the "
                                     "reference one keeps the top max(2, 10%) of the batch")
                return REFERENCE_AST | data
            return data

        @model_validator(mode="after")
        def _weights(self):
            if self.theta_min >= self.theta_max:
                raise ValueError("theta_min must be below theta_max")
            if self.scoring == "custom" and not (self.w_loss + self.w_intensity + self.w_entropy
                                                 + self.w_grad):
                raise ValueError("custom scoring needs at least one positive weight")
            return self

        def identity(self) -> dict[str, object]:
            out = super().identity()
            if self.controller == "reference":
                out.pop("min_active")  # the pi controller's fallback: no effect here
            return out

    def begin(self, n_train, total_steps, batch, seed):
        super().begin(n_train, total_steps, batch, seed)
        c = self.config
        kind = ReferenceController if c.controller == "reference" else PIController
        self.controller = kind(c.target_rate, c.kp, c.ki, c.ema, c.theta_init, c.theta_min,
                               c.theta_max, c.integral_limit)
        weights = SCORING_PRESETS.get(c.scoring) or (c.w_loss, c.w_intensity, c.w_entropy,
                                                      c.w_grad)
        self.weights = [w / sum(weights) for w in weights]

    def significance(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Weighted mix of loss, input intensity, entropy and gradient proxy: each divided by
        its batch mean under the pi controller (so the threshold is in units of the mean),
        raw under the reference one (sundew.py L67-75)."""
        logits = scoring_forward(model, x)
        probs = logits.softmax(1)
        parts = []
        w_loss, w_intensity, w_entropy, w_grad = self.weights
        if w_loss:
            parts.append((w_loss, per_sample_loss(logits, y)))
        if w_intensity:
            parts.append((w_intensity, x.flatten(1).float().std(1)))
        if w_entropy:
            parts.append((w_entropy, -(probs * probs.clamp_min(1e-12).log()).sum(1)))
        if w_grad:
            onehot = F.one_hot(y, probs.shape[1]).float()
            parts.append((w_grad, (probs - onehot).norm(dim=1)))
        if self.config.controller == "reference":
            return sum(w * part for w, part in parts)
        return sum(w * part / part.mean().clamp_min(1e-12) for w, part in parts)

    def choose(self, model, x, y, index, step):
        score = self.significance(model, x, y)
        theta = self.controller.theta
        keep = (score > theta).nonzero().squeeze(1)
        if self.config.controller == "reference":  # sundew.py L108-114 (at most the batch)
            least = taken = min(len(y), max(2, int(len(y) * 0.10)))
        else:
            least = math.ceil(self.config.min_active * self.config.target_rate * len(y))
            taken = self.k(len(y))
        fallback = len(keep) < least
        if fallback:
            keep = score.topk(taken).indices.sort().values
        self.controller.update(len(keep) / len(y))
        return keep, None, {"theta": theta, "ema_rate": self.controller.ema,
                            "error": self.controller.error, "fallback": float(fallback)}

    def summary(self):
        return super().summary() | {"controller": self.config.controller} \
            | self.controller.metrics(self.rates)


class PIController:
    """Moves the threshold so the EMA of the activation rate tracks the target.

    Positional PI: theta = theta_init + kp * e + ki * sum(e), with e = EMA rate - target (more
    samples active than wanted raises the threshold). Anti-windup: the integral is clamped
    and stops accumulating while the threshold sits at a bound.
    """

    def __init__(self, target: float, kp: float, ki: float, ema: float, theta_init: float,
                 theta_min: float, theta_max: float, integral_limit: float):
        self.target, self.kp, self.ki, self.beta = target, kp, ki, ema
        self.theta_init, self.bounds, self.limit = theta_init, (theta_min, theta_max), integral_limit
        self.theta, self.ema, self.integral, self.error = theta_init, target, 0.0, 0.0
        self.emas: list[float] = []

    def update(self, rate: float) -> float:
        self.ema = self.beta * self.ema + (1 - self.beta) * rate
        self.error = self.ema - self.target
        integral = min(self.limit, max(-self.limit, self.integral + self.error))
        unclamped = self.theta_init + self.kp * self.error + self.ki * integral
        lo, hi = self.bounds
        if lo <= unclamped <= hi:
            self.integral = integral  # anti-windup: no integration while saturated
        self.theta = min(hi, max(lo, self.theta_init + self.kp * self.error
                                 + self.ki * self.integral))
        self.emas.append(self.ema)
        return self.theta

    def metrics(self, rates: list[float], band: float = 0.02) -> dict[str, Any]:
        """Settling step (after it the EMA stays within ``band`` of the target), overshoot
        (largest excursion past the target after first reaching it, as a fraction of the
        target) and steady-state error (mean batch rate over the second half - target)."""
        emas = np.array(self.emas)
        if not len(emas):
            return {}
        outside = np.nonzero(np.abs(emas - self.target) > band)[0]
        settled = 0 if not len(outside) else int(outside[-1]) + 1
        side = np.sign(emas[0] - self.target) or 1.0
        crossed = np.nonzero(np.sign(emas - self.target) != side)[0]
        overshoot = float(np.max(np.abs(emas[crossed[0]:] - self.target)) / self.target) \
            if len(crossed) else 0.0
        second = np.array(rates[len(rates) // 2:])
        return {"settling_step": settled + 1 if settled < len(emas) else None,
                "overshoot": overshoot,
                "steady_state_error": float(second.mean() - self.target)}


class ReferenceController(PIController):
    """The reference AST's controller, step for step (sundew.py L116-136): the EMA starts at
    the target; e = EMA - target; while theta_min < theta < theta_max (strictly, before the
    update) the integral adds e, clamped to ±integral_limit, else it decays by 0.9; then
    theta += kp * e + ki * integral (incremental), clamped to the bounds."""

    def update(self, rate: float) -> float:
        self.ema = self.beta * self.ema + (1 - self.beta) * rate
        self.error = self.ema - self.target
        lo, hi = self.bounds
        if lo < self.theta < hi:
            self.integral = min(self.limit, max(-self.limit, self.integral + self.error))
        else:
            self.integral *= 0.90  # sundew.py L132
        self.theta = min(hi, max(lo, self.theta + self.kp * self.error + self.ki * self.integral))
        self.emas.append(self.ema)
        return self.theta


@methods.register("infobatch_per_batch")
class InfoBatchPerBatch(Selection):
    """InfoBatch's rule applied per batch: prune part of the below-mean-loss samples at
    random, reweight the rest.

    Not the published InfoBatch, which prunes once per epoch and so takes fewer steps: here
    every method takes the same steps and differs in samples per step. Of the batch's
    samples whose last loss is below the mean of all seen losses, a random m are pruned,
    sized to reach the target rate but at most ``max_prune`` of them (so targets below about
    half the batch are not reached, and such rates give the same run); the kept ones are
    weighted n_below / (n_below - m), which keeps the batch loss an unbiased estimate. The
    final ``anneal`` fraction of steps trains on everything.
    """

    class Config(Selection.Config):
        max_prune: float = Field(0.9, gt=0, lt=1, description="largest pruned share of the "
                                                               "below-mean samples")
        anneal: float = Field(0.125, ge=0, le=1, description="final fraction of steps on all data")

    def begin(self, n_train, total_steps, batch, seed):
        super().begin(n_train, total_steps, batch, seed)
        self.last_loss = torch.full((n_train,), math.inf)  # inf: never trained on, never pruned

    def choose(self, model, x, y, index, step):
        rows = torch.arange(len(y))
        if step > (1 - self.config.anneal) * self.total_steps:
            return rows.to(x.device), None, {"prune_ratio": 0.0}
        last = self.last_loss[index.cpu()]
        seen = torch.isfinite(self.last_loss)
        if not seen.any():
            return rows.to(x.device), None, {"prune_ratio": 0.0}
        below = (last < self.last_loss[seen].mean()).nonzero().squeeze(1)
        wanted = len(y) - self.k(len(y))
        m = min(wanted, math.floor(self.config.max_prune * len(below)))
        if m <= 0:
            return rows.to(x.device), None, {"prune_ratio": 0.0}
        pruned = below[torch.randperm(len(below), generator=self.generator)[:m]]
        mask = torch.ones(len(y), dtype=torch.bool)
        mask[pruned] = False
        keep = rows[mask]
        weights = torch.ones(len(y))
        weights[below] = len(below) / (len(below) - m)
        return keep.to(x.device), weights[keep].to(x.device), {"prune_ratio": m / len(below)}

    def trained_losses(self, rows, losses):
        self.last_loss[rows.cpu()] = losses.float().cpu()


@methods.register("infobatch")
class InfoBatch(Method):
    """InfoBatch (Qin et al., ICLR 2024) as published: prune once per epoch, so an epoch
    takes fewer steps.

    Each sample's score is its last training loss. At the start of every epoch a random
    ``prune_ratio`` of the samples scoring below the mean is left out of that epoch, and the
    kept below-mean samples' losses are weighted 1 / (1 - prune_ratio), keeping the expected
    gradient unbiased; samples never trained yet are always kept. The final ``anneal``
    fraction of the epochs trains on everything. The budget is ``train.epochs``; the
    learning-rate schedule follows epoch progress, and the run records the steps it took
    (its saving) against ``nominal_steps``.
    """

    epoch_budget = True

    class Config(PluginConfig):
        prune_ratio: float = Field(0.5, gt=0, lt=1, description="share of the below-mean-score "
                                                                 "samples pruned each epoch")
        anneal: float = Field(0.125, ge=0, le=1, description="final fraction of epochs on all data")

    @property
    def stackable(self) -> bool:
        return False  # epochs of its own length, a weighted loss

    def begin(self, n_train, total_steps, batch, seed):
        self.nominal_steps, self.batch = total_steps, batch
        self.epochs = max(1, round(total_steps / max(1, n_train // batch)))
        self.score = torch.full((n_train,), math.inf)  # inf: never trained on, never pruned
        self.weight = torch.ones(n_train)
        self.generator = torch.Generator().manual_seed(seed + 7919)  # apart from the data order
        self.kept: list[float] = []

    def epoch_order(self, order, epoch):
        n = len(order)
        self.weight = torch.ones(n)
        seen = torch.isfinite(self.score)
        if epoch >= (1 - self.config.anneal) * self.epochs or not seen.any():
            self.kept.append(1.0)
            return order
        r = self.config.prune_ratio
        below = seen & (self.score < self.score[seen].mean())
        pruned = below & (torch.rand(n, generator=self.generator) < r)
        if n - int(pruned.sum()) < self.batch:  # keep at least one batch
            pruned[:] = False
        self.weight[below & ~pruned] = 1 / (1 - r)
        self.kept.append(1 - float(pruned.float().mean()))
        return order[~pruned[order]]

    def step_loss(self, model, x, y, index, step) -> StepLoss:
        losses = self.criterion(model(x), y, reduction="none")
        rows = index.cpu()
        self.score[rows] = losses.detach().float().cpu()
        loss = (losses * self.weight[rows].to(losses.device)).mean()
        return StepLoss(loss, trained=len(y))

    def summary(self) -> dict[str, Any]:
        return {"nominal_steps": self.nominal_steps,
                "epoch_keep_rate": float(np.mean(self.kept)) if self.kept else None}




@methods.register("curriculum")
class Curriculum(Method):
    """Curriculum learning, easy to hard by loss, at a fixed share of the data per epoch (a
    baseline for adaptive selection at the same rate).

    The first epoch trains on a random ``target_rate`` of the rows. After it, every epoch
    ranks all rows by their last training loss (rows not trained yet rank at the median)
    and trains on a window of ``target_rate`` of them, in random order, that slides from the
    easiest rows (second epoch) to the hardest (last epoch). The budget is ``train.epochs``;
    each epoch takes ``target_rate`` of the steps of a full one.
    """

    epoch_budget = True

    class Config(PluginConfig):
        target_rate: float = Field(0.5, gt=0, le=1, description="share of the rows per epoch")

    @property
    def stackable(self) -> bool:
        return False  # epochs of its own length and order

    def begin(self, n_train, total_steps, batch, seed):
        self.nominal_steps, self.batch = total_steps, batch
        self.epochs = max(1, round(total_steps / max(1, n_train // batch)))
        self.score = torch.full((n_train,), math.nan)
        self.generator = torch.Generator().manual_seed(seed + 7907)  # apart from the data order

    def epoch_order(self, order, epoch):
        n = len(order)
        keep = max(self.batch, round(self.config.target_rate * n))
        if epoch == 0 or keep >= n:
            return order[:keep]
        score = self.score.clone()
        seen = ~torch.isnan(score)
        score[~seen] = score[seen].median() if seen.any() else 0.0
        ranked = torch.argsort(score, stable=True)  # easiest first
        later = max(1, self.epochs - 2)
        start = round((n - keep) * min(1.0, (epoch - 1) / later))
        window = ranked[start:start + keep]
        return window[torch.randperm(len(window), generator=self.generator)]

    def step_loss(self, model, x, y, index, step) -> StepLoss:
        losses = self.criterion(model(x), y, reduction="none")
        self.score[index.cpu()] = losses.detach().float().cpu()
        return StepLoss(losses.mean(), trained=len(y))

    def summary(self) -> dict[str, Any]:
        return {"nominal_steps": self.nominal_steps}
