"""Selective layer masking: watch every artifact subspace's gradients and stop updating what would overfit.

The paper's text is not available; its abstracts give two readings, both implemented here:

- v1: "a selective layer mask strategy adaptively regulates the update behavior of corresponding network layers
  according to the learning state of each artifact subspace, suppressing overfitting to any single forgery
  characteristic" → the **subspace** rule;
- v3: "evaluates the bias-variance characteristics of layer-wise gradients to identify forgery-sensitive layers,
  thereby selectively updating them" → the **layer** rule.

Statistics, per artifact subspace k of layer l (a wrapped Linear), at every optimizer step, from the gradient g of
its factors (U, s, V flattened), with α = 1 − ``momentum`` (exponentially weighted mean and variance, West 1979)::

    δ = g − ḡ;   ḡ ← ḡ + α δ;   var ← (1 − α) (var + α ‖δ‖²)
    bias = ‖ḡ‖²,   variance = var,   GSNR = bias / (variance + ε)
    strength = ‖U s Vᵀ − U₀ s₀ V₀ᵀ‖_F / ‖U₀ s₀ V₀ᵀ‖_F        (factorised, see ArtifactSubspace)

A high GSNR means the batches agree on a direction (a transferable signal); a low one means the subspace fits
batch-specific noise. The strength says how far the subspace has already moved from its pretrained value.

Rules, after ``warmup_steps`` and then every ``interval`` optimizer steps:

- layer (v3): a layer's score is the mean GSNR of its subspaces; the top ``keep_ratio`` of layers keep updating,
  the rest are masked (until a later update ranks them back in);
- subspace (v1): inside kept layers, a subspace is masked when its strength exceeds ``max_strength`` or its GSNR
  falls below ``min_gsnr``; a masked subspace is released only when its GSNR exceeds ``min_gsnr·(1 + hysteresis)``
  and its strength is below ``max_strength·(1 − hysteresis)`` — so masks do not flap around a threshold. (A masked
  subspace does not move, so a strength mask lasts unless ``max_strength`` is raised.)

Masking sets the factors' ``.grad`` to ``None`` before the optimizer step, so every torch optimizer skips them: no
momentum, no weight decay, bit-identical values. Statistics still see those gradients (they are computed, then
dropped), which is what lets a masked subspace recover. ``requires_grad`` is never toggled (DDP needs a fixed set
of parameters). Gradients in ``on_before_optimizer_step`` are accumulated, all-reduced and unscaled, so the
statistics are per optimizer step and equal on every rank; the decisions are still broadcast from rank 0.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from ..adapters import ArtifactSubspace, iter_adapters
from .run_folder import log_dir, log_image

__all__ = ["SelectiveLayerMask"]

Granularity = Literal["layer", "subspace", "both"]


class SelectiveLayerMask(Callback):
    """Track each artifact subspace's learning state and mask the updates of layers/subspaces (see module doc).

    Args:
        enabled: false keeps the statistics and logs but never masks (the ablation).
        granularity: ``layer`` (v3), ``subspace`` (v1) or ``both``.
        warmup_steps: optimizer steps before the first decision.
        interval: optimizer steps between decisions.
        keep_ratio: share of layers kept updating by the layer rule, in (0, 1].
        min_gsnr: subspace rule: mask below this GSNR.
        max_strength: subspace rule: mask above this fitting strength.
        hysteresis: relative margin a masked subspace must clear to be released, in [0, 1).
        momentum: weight of the past in the moving mean/variance, in [0, 1).
        eps: added to the variance in the GSNR.
    """

    def __init__(
        self,
        enabled: bool = True,
        granularity: Granularity = "both",
        warmup_steps: int = 500,
        interval: int = 100,
        keep_ratio: float = 0.5,
        min_gsnr: float = 0.01,
        max_strength: float = 2.0,
        hysteresis: float = 0.2,
        momentum: float = 0.9,
        eps: float = 1e-12,
    ) -> None:
        if granularity not in ("layer", "subspace", "both"):
            raise ValueError(f"SelectiveLayerMask.granularity must be 'layer', 'subspace' or 'both', got {granularity!r}")
        for name, value, low in (("warmup_steps", warmup_steps, 0), ("interval", interval, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SelectiveLayerMask.{name} must be an int >= {low}, got {value!r}")
        checks = (("keep_ratio", keep_ratio, 0 < keep_ratio <= 1, "in (0, 1]"),
                  ("min_gsnr", min_gsnr, min_gsnr >= 0, ">= 0"),
                  ("max_strength", max_strength, max_strength > 0, "> 0"),
                  ("hysteresis", hysteresis, 0 <= hysteresis < 1, "in [0, 1)"),
                  ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
                  ("eps", eps, eps > 0, "> 0"))
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"SelectiveLayerMask.{name} must be {allowed}, got {value!r}")
        self.enabled = enabled
        self.granularity = granularity
        self.warmup_steps = warmup_steps
        self.interval = interval
        self.keep_ratio = keep_ratio
        self.min_gsnr = min_gsnr
        self.max_strength = max_strength
        self.hysteresis = hysteresis
        self.momentum = momentum
        self.eps = eps
        self.steps = 0  # optimizer steps seen
        self.names: list[str] = []  # "<layer>/<subspace index>", in model order
        self.layers: list[str] = []
        self.mean_grad = torch.zeros(0)  # ḡ of every subspace, flattened (U, s, V) and concatenated
        self.variances = torch.zeros(0)  # per subspace
        self.layer_kept = torch.zeros(0, dtype=torch.bool)  # layer rule's state, per layer
        self.rule_masked = torch.zeros(0, dtype=torch.bool)  # subspace rule's state (with hysteresis)
        self.history: list[dict[str, Any]] = []  # one entry per decision, for the JSONL and the heatmap
        self._subspaces: list[ArtifactSubspace] = []
        self._layer_of = torch.zeros(0, dtype=torch.long)
        self._lengths = torch.zeros(0, dtype=torch.long)
        self._pending_state: dict[str, Any] | None = None

    @property
    def masked(self) -> Tensor:
        """Per subspace, model order: is its update currently blocked?"""
        if not self.enabled:
            return torch.zeros_like(self.rule_masked)
        return ~self.layer_kept[self._layer_of] | self.rule_masked

    # --- discovery and state ---

    def _discover(self, pl_module: LightningModule) -> None:
        names, layers, subspaces, layer_of = [], [], [], []
        for layer_name, adapter in iter_adapters(pl_module):
            layers.append(layer_name)
            for k, sub in enumerate(adapter.subspaces):
                names.append(f"{layer_name}/{k}")
                subspaces.append(sub)
                layer_of.append(len(layers) - 1)
        if not subspaces:
            raise ValueError(f"SelectiveLayerMask found no MASM adapters in {type(pl_module).__name__}; remove the "
                             "callback for models without adapters (e.g. configs/full_ft.yaml)")
        device = subspaces[0].U.device
        self.names, self.layers, self._subspaces = names, layers, subspaces
        self._layer_of = torch.tensor(layer_of, device=device)
        self._lengths = torch.tensor([sum(p.numel() for p in s.factors()) for s in subspaces], device=device)
        if self._pending_state is not None:
            self._restore(self._pending_state, device)
            self._pending_state = None
        else:
            self.mean_grad = torch.zeros(int(self._lengths.sum()), device=device)
            self.variances = torch.zeros(len(subspaces), device=device)
            self.layer_kept = torch.ones(len(layers), dtype=torch.bool, device=device)
            self.rule_masked = torch.zeros(len(subspaces), dtype=torch.bool, device=device)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "names": list(self.names), "mean_grad": self.mean_grad.cpu(),
                "variances": self.variances.cpu(), "layer_kept": self.layer_kept.cpu(),
                "rule_masked": self.rule_masked.cpu(), "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = dict(state_dict)  # applied once the model's adapters are known
        self._subspaces = []
        self.steps = state_dict["steps"]
        self.history = list(state_dict["history"])

    def _restore(self, state: dict[str, Any], device: torch.device) -> None:
        if state["names"] != self.names:
            raise ValueError(f"SelectiveLayerMask state is for {len(state['names'])} subspaces "
                             f"({state['names'][:2]}…), this model has {len(self.names)} ({self.names[:2]}…): "
                             "resume with the adapter configuration the checkpoint was trained with")
        for key in ("mean_grad", "variances", "layer_kept", "rule_masked"):
            setattr(self, key, state[key].to(device))

    # --- the work, where gradients are final ---

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self._subspaces:
            self._discover(pl_module)
        self.steps += 1
        self._update_statistics()
        if self.steps >= self.warmup_steps and (self.steps - self.warmup_steps) % self.interval == 0:
            self._decide(trainer)
            self._record(pl_module)
        if self.enabled:
            for sub, masked in zip(self._subspaces, self.masked.tolist()):
                if masked:
                    for p in sub.factors():
                        p.grad = None

    @torch.no_grad()
    def _update_statistics(self) -> None:
        """One exponentially weighted mean/variance update for all subspaces at once (a handful of kernels)."""
        alpha = 1.0 - self.momentum
        factors = [p for sub in self._subspaces for p in sub.factors()]
        if any(p.grad is None for p in factors):
            return  # a step without gradients for some factor carries no learning signal to record
        g = torch.cat([p.grad.reshape(-1) for p in factors]).float()
        if not torch.isfinite(g).all():
            return  # an fp16 overflow step (the scaler will skip it): recording it would poison the averages
        delta = g - self.mean_grad
        self.mean_grad.add_(delta, alpha=alpha)
        sq = torch.segment_reduce(delta.square(), "sum", lengths=self._lengths)
        self.variances.mul_(1 - alpha).add_(sq, alpha=(1 - alpha) * alpha)

    @torch.no_grad()
    def statistics(self) -> dict[str, Tensor]:
        """Per subspace (model order): ``bias`` ‖ḡ‖², ``variance``, ``gsnr``, fitting ``strength``."""
        bias = torch.segment_reduce(self.mean_grad.square(), "sum", lengths=self._lengths)
        strength = torch.stack([sub.fitting_strength().float() for sub in self._subspaces])
        return {"bias": bias, "variance": self.variances.clone(), "gsnr": bias / (self.variances + self.eps),
                "strength": strength}

    def layer_scores(self, gsnr: Tensor) -> Tensor:
        """Mean GSNR of each layer's subspaces."""
        total = torch.zeros(len(self.layers), device=gsnr.device).index_add_(0, self._layer_of, gsnr)
        count = torch.zeros(len(self.layers), device=gsnr.device).index_add_(0, self._layer_of, torch.ones_like(gsnr))
        return total / count

    @torch.no_grad()
    def _decide(self, trainer: Trainer) -> None:
        stats = self.statistics()
        gsnr, strength = stats["gsnr"], stats["strength"]
        layer_kept = torch.ones_like(self.layer_kept)
        if self.granularity in ("layer", "both"):
            keep = max(1, math.ceil(self.keep_ratio * len(self.layers)))
            layer_kept = torch.zeros_like(self.layer_kept)
            layer_kept[self.layer_scores(gsnr).argsort(descending=True, stable=True)[:keep]] = True
        rule_masked = torch.zeros_like(self.rule_masked)
        if self.granularity in ("subspace", "both"):
            trip = (gsnr < self.min_gsnr) | (strength > self.max_strength)
            release = (gsnr > self.min_gsnr * (1 + self.hysteresis)) & (
                strength < self.max_strength * (1 - self.hysteresis))
            rule_masked = trip | (self.rule_masked & ~release)
        # Statistics are identical on every rank already; broadcasting makes divergence impossible anyway. CPU
        # copies: a pickled CUDA tensor would land on rank 0's device.
        kept, ruled = trainer.strategy.broadcast((layer_kept.cpu(), rule_masked.cpu()), src=0)
        self.layer_kept, self.rule_masked = kept.to(gsnr.device), ruled.to(gsnr.device)

    # --- what users see ---

    def _record(self, pl_module: LightningModule) -> None:
        stats = {k: v.tolist() for k, v in self.statistics().items()}
        masked = self.masked.tolist()
        entry = {"step": self.steps, "subspaces": [
            {"layer": self.layers[int(self._layer_of[i])], "subspace": int(name.rsplit("/", 1)[1]),
             "gsnr": stats["gsnr"][i], "bias": stats["bias"][i], "variance": stats["variance"][i],
             "strength": stats["strength"][i], "masked": masked[i]} for i, name in enumerate(self.names)]}
        self.history.append(entry)
        updating = 1 - sum(masked) / len(masked)
        layer_of = self._layer_of.tolist()
        layer_updating = [not all(m for m, j in zip(masked, layer_of) if j == layer) for layer in range(len(self.layers))]
        scores = self.layer_scores(torch.tensor(stats["gsnr"], device=self._layer_of.device)).tolist()
        metrics = {"mask/subspaces_updating": updating,
                   "mask/layers_updating": sum(layer_updating) / len(layer_updating),
                   "mask/mean_gsnr": sum(stats["gsnr"]) / len(stats["gsnr"])}
        metrics |= {f"mask/score/{layer}": score for layer, score in zip(self.layers, scores)}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        trainer = pl_module.trainer
        folder = log_dir(trainer)  # every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "layer_masks.jsonl").open("a") as f:
                f.write(json.dumps(entry) + "\n")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)  # every rank
        if not trainer.is_global_zero or not self.history:
            return
        from ..evaluation.plots import mask_heatmap  # matplotlib only when there is something to draw

        log_image(trainer, "mask/layer_masks", mask_heatmap(self.history, folder / "layer_masks.png"))
