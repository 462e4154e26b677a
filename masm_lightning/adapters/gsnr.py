"""The selective layer mask's statistics and decisions as pure functions: tensors and floats in, masks out.

Imports torch only. :class:`~masm_lightning.training.callbacks.SelectiveLayerMask` (Lightning hooks, state, logging) and
the FMSD layer selection (:mod:`masm_lightning.training.selection`) both call this code, and
``benchmarks/mask_calibration.py`` calibrates exactly this code. The formulas are in ``docs/method.md``.

**Estimator** (per coordinate j of a flattened gradient stream g_1 … g_t, weights a_i = β^(t−i), normalised
w_i = a_i / Σa; β = ``momentum``, β = 1 is the plain average of every sample)::

    m_j = Σ w_i g_ij                      (Adam's bias-corrected mean: the recursion m ← m + α_t (g − m),
    S_j = Σ w_i (g_ij − m_j)²              S ← (1 − α_t)(S + α_t (g − m_old)²), α_t = (1 − β)/(1 − β^t))
    n_eff = 1 / Σ w_i²                    (effective number of samples)
    σ̂²_j = S_j / (1 − 1/n_eff)            (unbiased weighted variance: E σ̂² = σ²)
    k = (1 − Σw²)² / (Σw² − 2Σw³ + (Σw²)²)  (Satterthwaite degrees of freedom of σ̂²; k = t − 1 for β = 1)
    r_j = (k − 2)/k · m_j² / (σ̂²_j + ε (σ̂²_j + m_j²)) − 1/n_eff
    GSNR(group) = max(0, mean_j r_j)      over the group's coordinates (Liu et al. 2020)

``E m² = μ² + σ²/n_eff`` gives the ``− 1/n_eff`` term (without it, pure noise reads 1/n_eff: the old floor of
α/(2 − α) ≈ 0.053 at β = 0.9), and ``E[1/σ̂²] = k/((k − 2) σ²)`` for σ̂² ~ σ² χ²_k / k gives the ``(k − 2)/k`` factor
(without it, GSNR 10 reads 12% high at β = 0.9). The mean is over coordinates, so each coordinate is measured in
its own units and a group's score does not depend on how its energy is split between U, V and s. ``ε`` is relative
to the coordinate's own raw second moment, so a coordinate whose gradient never varies reads ≈ 1/ε instead of
dividing by zero, whatever the gradient scale, and a coordinate whose gradient is always zero reads 0. The
statistic is defined once k > 2 (four samples at β → 1); :func:`estimate_ready` says when.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GradientMoments",
    "combine_masks",
    "dominance_rule",
    "estimate_ready",
    "floor_rule",
    "layer_rule",
    "layer_scores",
    "layer_shares",
    "released",
    "segment_gsnr",
    "spread_shares",
    "type_shares",
    "weight_sums",
]

MIN_SAMPLES = 4  # the fewest samples with k > 2 (k = t − 1 for uniform weights; more for β < 1)


def weight_sums(momentum: float, count: int) -> tuple[float, float]:
    """``(Σ w², Σ w³)`` of the normalised weights ``w_i ∝ β^(t−i)`` after ``count`` samples (geometric sums)."""
    if count < 1:
        raise ValueError(f"weight_sums needs count >= 1, got {count}")
    if momentum >= 1.0:
        return 1.0 / count, 1.0 / count**2
    b = momentum

    def geometric(p: int) -> float:  # Σ_{i<t} b^{p i}
        return (1.0 - b ** (p * count)) / (1.0 - b**p)

    s1, s2, s3 = geometric(1), geometric(2), geometric(3)
    return s2 / s1**2, s3 / s1**3


def _dof(momentum: float, count: int) -> tuple[float, float]:
    """``(n_eff, k)`` after ``count`` samples."""
    w2, w3 = weight_sums(momentum, count)
    trace_a = 1.0 - w2
    trace_a2 = w2 - 2.0 * w3 + w2 * w2
    k = trace_a * trace_a / trace_a2 if trace_a2 > 0 else 0.0
    return 1.0 / w2, k


def estimate_ready(momentum: float, count: int) -> bool:
    """Whether :func:`segment_gsnr` is defined: σ̂² has more than 2 degrees of freedom."""
    return count >= MIN_SAMPLES and _dof(momentum, count)[1] > 2.0


@dataclass
class GradientMoments:
    """Per-coordinate bias-corrected weighted mean and variance of a gradient stream (see module doc).

    Attributes:
        momentum: β in [0, 1]; 1 weighs every sample equally (a plain average).
        mean: ``m``, one entry per coordinate (float32).
        var: ``S``, the weighted population variance per coordinate (float32).
        count: samples seen.
    """

    momentum: float
    mean: Tensor
    var: Tensor
    count: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"GradientMoments.momentum must be in [0, 1], got {self.momentum!r}")
        if self.mean.shape != self.var.shape:
            raise ValueError(f"GradientMoments.mean and .var differ in shape: {self.mean.shape} vs {self.var.shape}")

    @classmethod
    def zeros(cls, size: int, momentum: float, device: torch.device | str | None = None) -> GradientMoments:
        """An empty estimator for ``size`` coordinates."""
        return cls(momentum, torch.zeros(size, device=device), torch.zeros(size, device=device))

    @property
    def ready(self) -> bool:
        """Whether :meth:`gsnr` is defined yet (:func:`estimate_ready`)."""
        return estimate_ready(self.momentum, self.count)

    @torch.no_grad()
    def update(self, g: Tensor) -> bool:
        """Add one sample (any shape with ``mean.numel()`` elements); a non-finite one is skipped.

        Returns:
            False if the sample held inf/nan (an fp16 overflow step, which the scaler skips too) and was dropped.
        """
        g = g.reshape(-1).to(self.mean.dtype)
        if not torch.isfinite(g).all():
            return False
        self.count += 1
        b = self.momentum
        # α_t = (1 − β)/(1 − β^t): the exact weight of the newest sample among normalised geometric weights.
        alpha = 1.0 / self.count if b >= 1.0 else (1.0 - b) / (1.0 - b**self.count)
        delta = g - self.mean
        self.mean.add_(delta, alpha=alpha)
        self.var.mul_(1.0 - alpha).addcmul_(delta, delta, value=(1.0 - alpha) * alpha)
        return True

    def variance(self) -> Tensor:
        """σ̂², the unbiased per-coordinate variance (zeros before two samples)."""
        if self.count < 2:
            return torch.zeros_like(self.var)
        w2, _ = weight_sums(self.momentum, self.count)
        return self.var / (1.0 - w2)

    def gsnr(self, lengths: Tensor | None = None, eps: float = 1e-8) -> Tensor:
        """Per group of consecutive coordinates (``lengths``; None: one group), see :func:`segment_gsnr`."""
        return segment_gsnr(self.mean, self.var, self.count, self.momentum, lengths, eps)

    def segment_sums(self, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per group: ``Σ_j m_j²`` (bias energy) and ``Σ_j σ̂²_j`` (variance energy), in the gradient's units."""
        return _segment_sum(self.mean.square(), lengths), _segment_sum(self.variance(), lengths)


def _segment_sum(values: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return values.sum().reshape(1)
    return torch.segment_reduce(values, "sum", lengths=lengths.to(values.device))


@torch.no_grad()
def segment_gsnr(
    mean: Tensor, var: Tensor, count: int, momentum: float, lengths: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """GSNR of each group of coordinates: ``max(0, mean_j r_j)`` with r_j from the module doc.

    Args:
        mean: ``m`` per coordinate (:class:`GradientMoments`).
        var: ``S`` per coordinate, the weighted population variance.
        count: samples behind ``mean``/``var``.
        momentum: β the samples were weighted with.
        lengths: sizes of consecutive groups (summing to ``mean.numel()``); None treats all coordinates as one.
        eps: relative variance floor, in units of each coordinate's raw second moment ``σ̂² + m²``.

    Returns:
        One GSNR per group (float32); NaN everywhere while the estimate is not ready (:func:`estimate_ready`).
    """
    groups = 1 if lengths is None else lengths.numel()
    if not estimate_ready(momentum, count):
        return torch.full((groups,), math.nan, device=mean.device)
    n_eff, k = _dof(momentum, count)
    sigma2 = var / (1.0 - 1.0 / n_eff)
    mean2 = mean.square()
    sizes = torch.tensor([mean.numel()], device=mean.device) if lengths is None else lengths.to(mean.device)
    floor = eps * (sigma2 + mean2) + torch.finfo(torch.float32).tiny
    ratio = (k - 2.0) / k * mean2 / (sigma2 + floor) - 1.0 / n_eff
    return (_segment_sum(ratio, lengths) / sizes.clamp_min(1)).clamp_min(0.0)


# --- decisions ---


def layer_scores(gsnr: Tensor, layer_of: Tensor, num_layers: int) -> Tensor:
    """A layer's score: the mean GSNR of its subspaces (``layer_of[i]`` is subspace i's layer index)."""
    total = torch.zeros(num_layers, device=gsnr.device).index_add_(0, layer_of, gsnr.float())
    ones = torch.ones_like(gsnr, dtype=torch.float)
    count = torch.zeros(num_layers, device=gsnr.device).index_add_(0, layer_of, ones)
    return total / count.clamp_min(1)


def layer_rule(scores: Tensor, keep_ratio: float, kept: Tensor | None = None, hysteresis: float = 0.0) -> Tensor:
    """Which layers keep updating: the top ``ceil(keep_ratio · L)`` (at least one) by score.

    With ``kept`` (the previous decision) an incumbent competes with ``score · (1 + hysteresis)``, so two layers
    whose scores are within the margin do not swap places at every decision. Ties go to the earlier layer.

    Returns:
        Bool per layer, True = keeps updating.
    """
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    effective = scores.float().nan_to_num(nan=-math.inf)
    if kept is not None and hysteresis:
        effective = torch.where(kept.to(effective.device), effective * (1 + hysteresis), effective)
    keep = max(1, math.ceil(keep_ratio * scores.numel()))
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[effective.argsort(descending=True, stable=True)[:keep]] = True
    return out


def floor_rule(value: Tensor, masked: Tensor, floor: float, hysteresis: float) -> Tensor:
    """The noise rule: block where ``value < floor``; release a blocked entry only above ``floor·(1 + hysteresis)``.

    Between the two thresholds an entry keeps its previous state ``masked`` (no flapping). NaN (no estimate yet)
    never trips nor releases.

    Returns:
        Bool per entry, True = blocked.
    """
    known = ~value.isnan()
    trip = known & (value < floor)
    release = known & (value > floor * (1 + hysteresis))
    return trip | (masked.to(trip.device) & ~release)


def type_shares(energy: Tensor, fake: Tensor) -> Tensor:
    """Each group's gradient-energy share per forgery type, among the fake types.

    Args:
        energy: (groups, types), the energy ``Σ_j g_{t,j}²`` of type t's contribution to the group's gradient.
        fake: (types,) bool, the types that count (real samples train every subspace alike).

    Returns:
        (groups, types): ``p_{k,t} = E_{k,t} / Σ_{t' fake} E_{k,t'}``; 0 for non-fake types and energy-less groups.
    """
    kept = energy.double() * fake.to(energy.device)
    total = kept.sum(dim=1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0).float()


def spread_shares(energy: Tensor, fake: Tensor) -> Tensor:
    """Each group's share per forgery type of where the types' learning signals land (the layer rule's shares).

    Every type's energy is first spread over the groups, ``q_{l,t} = E_{l,t} / Σ_{l'} E_{l',t}`` (the fraction of
    type t's gradient energy that lands in group l), then shared among the fake types as in :func:`type_shares`:
    ``p̃_{l,t} = q_{l,t} / Σ_{t' fake} q_{l,t'}``. Raw energies make a fit type look small everywhere (its gradients
    shrink as its loss falls), so raw shares can never single out a layer that specialises on a fit type; after the
    spread, ``p̃_{l,t}`` is ``1/T`` for every layer when all T types spread alike and grows where one type
    concentrates its signal, whatever that type's overall gradient scale.

    Args:
        energy: (groups, types), the energy ``Σ_j g_{t,j}²`` of type t's contribution to the group's gradient.
        fake: (types,) bool, the types that count.

    Returns:
        (groups, types): ``p̃_{l,t}``; 0 for non-fake types, types without energy and energy-less groups.
    """
    energy = energy.double()
    total = energy.sum(dim=0, keepdim=True)
    spread = torch.where(total > 0, energy / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return type_shares(spread, fake)


def layer_shares(energy: Tensor, fake: Tensor) -> Tensor:
    """The layer rule's shares: per layer and type, the larger of the volume share (:func:`type_shares`) and the
    spread share (:func:`spread_shares`) — a layer is dominated by a type that carries most of its signal, or that
    concentrates its own signal in it."""
    return torch.maximum(type_shares(energy, fake), spread_shares(energy, fake))


def dominance_rule(
    shares: Tensor,
    type_loss: Tensor,
    present: Tensor,
    masked: Tensor,
    min_share: float,
    fit_ratio: float,
    hysteresis: float,
) -> tuple[Tensor, Tensor]:
    """The type rule: which groups are dominated by one forgery type that is already fit.

    A group (subspace or layer) with shares ``p_{k,t}`` (:func:`type_shares`) is dominated by
    ``t* = argmax_t p_{k,t}`` when ``p_{k,t*} ≥ min_share`` and ``ℓ_{t*} ≤ fit_ratio · median_t ℓ_t`` (the median
    over the ``present`` fake types): most of what the group still learns comes from one type that the model
    already fits better than the others. A blocked group is released when ``p_{k,t*} < min_share·(1 − hysteresis)``
    or ``ℓ_{t*} > fit_ratio·(1 + hysteresis)·median``; in between it keeps its state. With fewer than two present
    fake types nothing can dominate "among types": every group keeps its state.

    Args:
        shares: (groups, types).
        type_loss: (types,), mean training loss of each type (NaN where absent).
        present: (types,) bool, the fake types seen since the previous decision.
        masked: (groups,) bool, the previous decision.

    Returns:
        ``(masked, dominant)``: bool per group (True = blocked) and the dominant type per group (−1: none).
    """
    masked = masked.to(shares.device)
    present = present.to(shares.device)
    if int(present.sum()) < 2:
        return masked.clone(), torch.full_like(masked, -1, dtype=torch.long)
    top, dominant = shares.masked_fill(~present, -1.0).max(dim=1)
    median = type_loss.to(shares.device)[present].float().quantile(0.5)
    loss = type_loss.to(shares.device).float()[dominant]
    trip = (top >= min_share) & (loss <= fit_ratio * median)
    release = (top < min_share * (1 - hysteresis)) | (loss > fit_ratio * (1 + hysteresis) * median)
    return trip | (masked & ~release), torch.where(top > 0, dominant, -1)


def combine_masks(layer_kept: Tensor, rule_masked: Tensor, layer_of: Tensor, enabled: bool = True) -> Tensor:
    """Per subspace: blocked by its layer or by the subspace rule; all False when the mask is disabled."""
    if not enabled:
        return torch.zeros_like(rule_masked, dtype=torch.bool)
    return ~layer_kept[layer_of] | rule_masked


def released(before: Tensor, after: Tensor) -> Tensor:
    """Subspaces blocked before a decision and updating after it: their optimizer state must restart."""
    return before & ~after
