"""Selective layer masking: watch every artifact subspace's gradients and stop updating what would overfit.

The paper's text is not available; its abstracts give two readings. This callback is the first (v1, a dynamic
mask during training); the second (v3, FMSD: select layers once before injection) is
:class:`~masm_lightning.selection.LayerSelection`. Both use the same statistic (``docs/method.md``):

- v1: "a selective layer mask strategy adaptively regulates the update behavior of corresponding network layers
  according to the learning state of each artifact subspace, suppressing overfitting to any single forgery
  characteristic" → the **subspace** rule, and a **layer** rule that ranks layers by the same statistic.

Statistics, per artifact subspace k of layer l (a wrapped Linear), at every optimizer step, from the gradient g of
its factors (U, s, V flattened), computed by :mod:`~masm_lightning.callbacks.mask_policy` (formulas there)::

    GSNR = max(0, mean_j r_j),   r_j ≈ μ_j² / σ_j²   per coordinate j, bias-corrected and unbiased
    strength = ‖U s Vᵀ − U₀ s₀ V₀ᵀ‖_F / ‖U₀ s₀ V₀ᵀ‖_F        (factorised, see ArtifactSubspace)

A high GSNR means the batches agree on a direction (a transferable signal); a low one means the subspace fits
batch-specific noise. The strength says how far the subspace has already moved from its pretrained value.

Rules, after ``warmup_steps`` and then every ``interval`` optimizer steps (pure functions in ``mask_policy``):

- layer: a layer's score is the mean GSNR of its subspaces; the top ``keep_ratio`` of layers keep updating, the
  rest are masked (until a later decision ranks them back in); a kept layer competes with its score
  ``× (1 + hysteresis)``, so near-ties do not swap at every decision;
- subspace (v1): inside kept layers, a subspace is masked when its strength exceeds ``max_strength`` or its GSNR
  falls below ``min_gsnr``; a masked subspace is released only when its GSNR exceeds ``min_gsnr·(1 + hysteresis)``
  and its strength is below ``max_strength·(1 − hysteresis)`` — so masks do not flap around a threshold. (A masked
  subspace does not move, so a strength mask lasts unless ``max_strength`` is raised.)

**What it reads.** ``p.grad`` of the artifact factors in ``on_before_optimizer_step``: accumulated, all-reduced
and unscaled, not yet clipped, so the statistics are per optimizer step and equal on every rank (the decisions are
still broadcast from rank 0). That must be the *task* gradient: a regulariser that is added to the training loss
puts its deterministic gradient into ``p.grad`` and reads as signal. Regularisers must therefore not add to the
loss: MASMDetector's constraints are meant to act outside it (decoupled, after ``optimizer.step()``); while a model
still adds loss terms on the factors, their gradient biases the GSNR upwards.

**What it does.** Masking sets the factors' ``.grad`` to ``None`` before the optimizer step, so every torch
optimizer skips them: no momentum, no weight decay, bit-identical values. Statistics still see those gradients
(they are computed, then dropped), which is what lets a masked subspace recover. When a decision releases a
subspace, its factors' optimizer state is deleted (``optimizer.state.pop(p)``; Adam, AdamW and SGD re-initialise
it on their next step), so its first step follows the new gradient instead of momentum from before the mask
(``reset_released``). ``requires_grad`` is never toggled (DDP needs a fixed set of parameters).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from ..adapters import ArtifactSubspace, iter_adapters
from ..io import write_atomic
from .mask_policy import MIN_SAMPLES, GradientMoments, combine_masks, layer_rule, layer_scores, released, subspace_rule
from .run_folder import log_dir, log_image

__all__ = ["SelectiveLayerMask"]

Granularity = Literal["layer", "subspace", "both"]


class SelectiveLayerMask(Callback):
    """Track each artifact subspace's learning state and mask the updates of layers/subspaces (see module doc).

    Defaults come from ``benchmarks/mask_calibration.py`` and ``docs/method.md``:

    - ``momentum=0.99``: the estimate's time constant 1/(1 − β) = 100 steps equals ``interval``, so each decision
      rests on the gradients since the previous one (n_eff ≈ 199 samples). It is the smallest momentum in the
      calibration sweep whose single readings are within 15% of the truth for GSNR ≥ 0.1 on a 64-coordinate
      subspace (0.99: 12-14%, 0.98: 18%, 0.9: 43%); pure noise then reads ≤ 0.002 (99th percentile).
    - ``min_gsnr=0.05`` ≈ (1 − β₁)/(1 + β₁) for Adam's β₁ = 0.9: below it, batch noise puts more energy into Adam's
      first moment (an average over ~19 steps) than the signal does, so the subspace's updates are mostly a random
      walk. The estimate resolves it (worst absolute error ≤ 0.015 at GSNR ≤ 0.1 for 64 coordinates, ≤ 0.002 from
      1024) and pure noise reads an order of magnitude below it, so noise trips it and a real signal does not.
    - ``warmup_steps=500`` = 5 time constants; ``hysteresis=0.2`` is wider than the estimate's relative error at
      ``min_gsnr`` on realistic subspace sizes (≥ 1024 coordinates: ≤ 5%), so one noisy reading does not flap a mask.

    Args:
        enabled: false keeps the statistics and logs but never masks (the ablation).
        granularity: ``layer``, ``subspace`` (v1) or ``both``.
        warmup_steps: optimizer steps before the first decision; at least 4 (the estimate needs 4 samples).
        interval: optimizer steps between decisions.
        keep_ratio: share of layers kept updating by the layer rule, in (0, 1].
        min_gsnr: subspace rule: mask below this GSNR.
        max_strength: subspace rule: mask above this fitting strength.
        hysteresis: relative margin a masked subspace must clear to be released (and a kept layer's score bonus),
            in [0, 1).
        momentum: β of the exponentially weighted gradient moments, in [0.5, 1) (below 0.5 the estimate never has
            enough effective samples).
        eps: relative variance floor of the GSNR, in units of each coordinate's mean squared gradient (> 0).
        reset_released: delete a released subspace's optimizer state, so it restarts from the new gradient.
    """

    def __init__(
        self,
        enabled: bool = True,
        granularity: Granularity = "both",
        warmup_steps: int = 500,
        interval: int = 100,
        keep_ratio: float = 0.5,
        min_gsnr: float = 0.05,
        max_strength: float = 2.0,
        hysteresis: float = 0.2,
        momentum: float = 0.99,
        eps: float = 1e-8,
        reset_released: bool = True,
    ) -> None:
        if granularity not in ("layer", "subspace", "both"):
            raise ValueError(
                f"SelectiveLayerMask.granularity must be 'layer', 'subspace' or 'both', got {granularity!r}"
            )
        for name, count, low in (("warmup_steps", warmup_steps, MIN_SAMPLES), ("interval", interval, 1)):
            if isinstance(count, bool) or not isinstance(count, int) or count < low:
                raise ValueError(f"SelectiveLayerMask.{name} must be an int >= {low}, got {count!r}")
        checks = (
            ("keep_ratio", keep_ratio, 0 < keep_ratio <= 1, "in (0, 1]"),
            ("min_gsnr", min_gsnr, min_gsnr >= 0, ">= 0"),
            ("max_strength", max_strength, max_strength > 0, "> 0"),
            ("hysteresis", hysteresis, 0 <= hysteresis < 1, "in [0, 1)"),
            ("momentum", momentum, 0.5 <= momentum < 1, "in [0.5, 1)"),
            ("eps", eps, eps > 0, "> 0"),
        )
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
        self.reset_released = reset_released
        self.steps = 0  # optimizer steps seen
        self.names: list[str] = []  # "<layer>/<subspace index>", in model order
        self.layers: list[str] = []
        # Per coordinate of every subspace's flattened (U, s, V), concatenated in model order.
        self.moments = GradientMoments.zeros(0, momentum)
        self.layer_kept = torch.zeros(0, dtype=torch.bool)  # layer rule's state, per layer
        self.rule_masked = torch.zeros(0, dtype=torch.bool)  # subspace rule's state (with hysteresis)
        self.history: list[dict[str, Any]] = []  # one entry per decision, for the JSONL and the heatmap
        self.layer_of = torch.zeros(0, dtype=torch.long)  # per subspace: index into `layers`
        self.lengths = torch.zeros(0, dtype=torch.long)  # per subspace: number of factor coordinates
        self._subspaces: list[ArtifactSubspace] = []
        self._pending_state: dict[str, Any] | None = None
        self._resumed = False

    @property
    def masked(self) -> Tensor:
        """Per subspace, model order: is its update currently blocked?"""
        return combine_masks(self.layer_kept, self.rule_masked, self.layer_of, self.enabled)

    # --- discovery and state ---

    def _discover(self, pl_module: LightningModule) -> None:
        names: list[str] = []
        layers: list[str] = []
        subspaces: list[ArtifactSubspace] = []
        layer_of: list[int] = []
        for layer_name, adapter in iter_adapters(pl_module):
            layers.append(layer_name)
            for k, sub in enumerate(adapter.subspaces):
                if not isinstance(sub, ArtifactSubspace):  # a ModuleList holds any module
                    raise TypeError(f"{layer_name}: subspace {k} is a {type(sub).__name__}, not an ArtifactSubspace")
                names.append(f"{layer_name}/{k}")
                subspaces.append(sub)
                layer_of.append(len(layers) - 1)
        if not subspaces:
            raise ValueError(
                f"SelectiveLayerMask found no MASM adapters in {type(pl_module).__name__}; remove the "
                "callback for models without adapters (e.g. configs/full_ft.yaml)"
            )
        device = subspaces[0].U.device
        self.names, self.layers, self._subspaces = names, layers, subspaces
        self.layer_of = torch.tensor(layer_of, device=device)
        self.lengths = torch.tensor([sum(p.numel() for p in s.factors()) for s in subspaces], device=device)
        self.moments = GradientMoments.zeros(int(self.lengths.sum()), self.momentum, device)
        self.layer_kept = torch.ones(len(layers), dtype=torch.bool, device=device)
        self.rule_masked = torch.zeros(len(subspaces), dtype=torch.bool, device=device)
        if self._pending_state is not None:
            self._restore(self._pending_state, device)
            self._pending_state = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "names": list(self.names),
            "count": self.moments.count,
            "mean_grad": self.moments.mean.cpu(),
            "var_grad": self.moments.var.cpu(),
            "layer_kept": self.layer_kept.cpu(),
            "rule_masked": self.rule_masked.cpu(),
            "history": self.history,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = dict(state_dict)  # applied once the model's adapters are known
        self._subspaces = []
        self.steps = state_dict["steps"]
        self.history = list(state_dict["history"])
        self._resumed = True

    def _restore(self, state: dict[str, Any], device: torch.device) -> None:
        if state["names"] != self.names:
            raise ValueError(
                f"SelectiveLayerMask state is for {len(state['names'])} subspaces "
                f"({state['names'][:2]}…), this model has {len(self.names)} ({self.names[:2]}…): "
                "resume with the adapter configuration the checkpoint was trained with"
            )
        self.layer_kept = state["layer_kept"].to(device)
        self.rule_masked = state["rule_masked"].to(device)
        if "var_grad" not in state:  # a checkpoint from the per-subspace estimator (before the per-coordinate one)
            rank_zero_warn(
                "SelectiveLayerMask: the checkpoint holds statistics of the previous GSNR estimator; "
                "the masks are kept and the statistics restart",
                category=UserWarning,
            )
            return
        self.moments = GradientMoments(
            self.momentum, state["mean_grad"].to(device), state["var_grad"].to(device), state["count"]
        )

    # --- the work, where gradients are final ---

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self._subspaces:
            self._discover(pl_module)
        self.steps += 1
        self._update_statistics()
        decision = self.steps >= self.warmup_steps and (self.steps - self.warmup_steps) % self.interval == 0
        if decision and self.moments.ready:  # not ready only if steps without gradients were skipped
            before = self.masked
            self._decide(trainer)
            freed = released(before, self.masked)
            if self.reset_released and freed.any():
                self._reset_optimizer_state(optimizer, freed)
            self._record(pl_module, freed)
        if self.enabled:
            for sub, masked in zip(self._subspaces, self.masked.tolist()):
                if masked:
                    for p in sub.factors():
                        p.grad = None

    @torch.no_grad()
    def _update_statistics(self) -> None:
        grads = [p.grad for sub in self._subspaces for p in sub.factors()]
        present = [g for g in grads if g is not None]
        if len(present) < len(grads):
            return  # a step without gradients for some factor carries no learning signal to record
        self.moments.update(torch.cat([g.reshape(-1) for g in present]).float())  # skips inf/nan steps

    def _reset_optimizer_state(self, optimizer: Any, freed: Tensor) -> None:
        """Forget the optimizer state (moments, step count) of the released subspaces' factors."""
        for sub, free in zip(self._subspaces, freed.tolist()):
            if free:
                for p in sub.factors():
                    optimizer.state.pop(p, None)

    @torch.no_grad()
    def statistics(self) -> dict[str, Tensor]:
        """Per subspace (model order): ``gsnr``, ``bias`` Σ_j m_j², ``variance`` Σ_j σ̂²_j, fitting ``strength``.

        ``gsnr`` is NaN until the estimate has enough samples (``mask_policy.estimate_ready``).
        """
        bias, variance = self.moments.segment_sums(self.lengths)
        strength = torch.stack([sub.fitting_strength().float() for sub in self._subspaces])
        return {
            "bias": bias,
            "variance": variance,
            "gsnr": self.moments.gsnr(self.lengths, self.eps),
            "strength": strength,
        }

    def layer_scores(self, gsnr: Tensor) -> Tensor:
        """Mean GSNR of each layer's subspaces, in ``layers`` order."""
        return layer_scores(gsnr, self.layer_of.to(gsnr.device), len(self.layers))

    @torch.no_grad()
    def _decide(self, trainer: Trainer) -> None:
        stats = self.statistics()
        gsnr, strength = stats["gsnr"], stats["strength"]
        layer_kept = torch.ones_like(self.layer_kept)
        if self.granularity in ("layer", "both"):
            layer_kept = layer_rule(self.layer_scores(gsnr), self.keep_ratio, self.layer_kept, self.hysteresis)
        rule_masked = torch.zeros_like(self.rule_masked)
        if self.granularity in ("subspace", "both"):
            rule_masked = subspace_rule(
                gsnr, strength, self.rule_masked, self.min_gsnr, self.max_strength, self.hysteresis
            )
        # Statistics are identical on every rank already; broadcasting makes divergence impossible anyway. CPU
        # copies: a pickled CUDA tensor would land on rank 0's device.
        kept, ruled = trainer.strategy.broadcast((layer_kept.cpu(), rule_masked.cpu()), src=0)
        self.layer_kept, self.rule_masked = kept.to(gsnr.device), ruled.to(gsnr.device)

    # --- what users see ---

    def _record(self, pl_module: LightningModule, freed: Tensor) -> None:
        stats = {k: v.tolist() for k, v in self.statistics().items()}
        masked = self.masked.tolist()
        entry = {
            "step": self.steps,
            "subspaces": [
                {
                    "layer": self.layers[int(self.layer_of[i])],
                    "subspace": int(name.rsplit("/", 1)[1]),
                    "gsnr": stats["gsnr"][i],
                    "bias": stats["bias"][i],
                    "variance": stats["variance"][i],
                    "strength": stats["strength"][i],
                    "masked": masked[i],
                }
                for i, name in enumerate(self.names)
            ],
        }
        self.history.append(entry)
        updating = 1 - sum(masked) / len(masked)
        layer_of = self.layer_of.tolist()
        layer_updating = [
            not all(m for m, j in zip(masked, layer_of) if j == layer) for layer in range(len(self.layers))
        ]
        scores = self.layer_scores(torch.tensor(stats["gsnr"], device=self.layer_of.device)).tolist()
        metrics = {
            "mask/subspaces_updating": updating,
            "mask/layers_updating": sum(layer_updating) / len(layer_updating),
            "mask/mean_gsnr": sum(stats["gsnr"]) / len(stats["gsnr"]),
            "mask/released": float(freed.sum()),
        }
        metrics |= {f"mask/score/{layer}": score for layer, score in zip(self.layers, scores)}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        trainer = pl_module.trainer
        folder = log_dir(trainer)  # every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "layer_masks.jsonl").open("a") as f:
                f.write(json.dumps(entry) + "\n")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed run: layer_masks.jsonl holds what the checkpoint's history holds, no decision the killed run
        # made after its checkpoint (this run makes those again).
        if not self._resumed:
            return
        folder = log_dir(trainer)  # every rank
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "layer_masks.jsonl", "".join(json.dumps(entry) + "\n" for entry in self.history))

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)  # every rank
        if not trainer.is_global_zero or not self.history:
            return
        from ..evaluation.plots import mask_heatmap  # matplotlib only when there is something to draw

        log_image(trainer, "mask/layer_masks", mask_heatmap(self.history, folder / "layer_masks.png"))
