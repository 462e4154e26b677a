"""Selective layer masking: watch every artifact subspace's gradients and stop updating what would overfit.

The paper's text is not available; its abstracts give two readings. This callback is the first (v1, a dynamic
mask during training); the second (v3, FMSD: select layers once before injection) is
:class:`~masm_lightning.training.selection.LayerSelection`. Both use the same statistic (``docs/method.md``):

- v1: "a selective layer mask strategy adaptively regulates the update behavior of corresponding network layers
  according to the learning state of each artifact subspace, suppressing overfitting to any single forgery
  characteristic" → the **subspace** rule, and a **layer** rule that ranks layers by the same statistic.

Statistics, per artifact subspace k of layer l (a wrapped Linear), at every optimizer step, from the gradient g of
its factors (U, s, V flattened), computed by :mod:`~masm_lightning.adapters.gsnr` (formulas there)::

    GSNR = max(0, mean_j r_j) / B,   r_j ≈ μ_j² / σ_j²   per coordinate j, bias-corrected and unbiased
    strength = ‖U s Vᵀ − U₀ s₀ V₀ᵀ‖_F / ‖U₀ s₀ V₀ᵀ‖_F        (factorised, see ArtifactSubspace; logged only)

B is the number of samples behind one optimizer step (batch × accumulation × ranks): the GSNR of a mini-batch mean
grows linearly with B, so the rule reads the per-sample GSNR and ``min_gsnr`` means the same at batch 8 and 64.

**Per forgery type** (batches carry ``forgery_type``: 0 real, ≥ 1 a fake type), on the last ``type_probes``
optimizer steps before each decision, the step's batch goes through the model again (no update, RNG and
batch-norm statistics restored) and, for every fake type t present, ``torch.autograd.grad`` gives type t's
contribution g_t = Σ_{i∈t} w_i ∇ℓ_i / Σ_i w_i to the batch gradient of every subspace's factors (all-reduced across
ranks). Accumulated over the probes: the energy E_{k,t} = Σ_j g_{t,j}² over subspace k's coordinates, its share
p_{k,t} = E_{k,t} / Σ_{t' fake} E_{k,t'}, and each type's mean per-sample loss ℓ_t. Cost: one forward and one
backward per present fake type, on ``type_probes`` of every ``interval`` steps.

Rules, after ``warmup_steps`` and then every ``interval`` optimizer steps (pure functions in ``adapters.gsnr``); each
masked subspace in ``layer_masks.jsonl`` names the rule that blocked it (``rule``):

- ``type`` (subspace): dominated by one fake type that is already fit — ``max_t p_{k,t} ≥ min_share`` and that type's
  ``ℓ_t ≤ fit_ratio · median`` of the present fake types' losses (``dominance_rule``, with hysteresis);
- ``layer`` (layer): the same test on the layer's shares (``layer_shares``): per type, the larger of its share of
  the layer's summed energy (volume) and its *spread* share (its energy in the layer divided by its energy over all
  layers, then shared among the types: where a fit type concentrates its signal, whatever its overall gradient
  scale); with
  ``keep_ratio`` set instead, ``keep_ratio``: the top share of layers by mean per-sample GSNR keep updating (a fixed
  share, an incumbent competes with its score × (1 + hysteresis));
- ``gsnr`` (subspace): the per-sample GSNR is below ``min_gsnr`` (noise), released above ``min_gsnr·(1 + h)``.

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
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor
from typing_extensions import override

from ...adapters import ArtifactSubspace, iter_adapters
from ...adapters.gsnr import (
    MIN_SAMPLES,
    GradientMoments,
    combine_masks,
    dominance_rule,
    floor_rule,
    layer_rule,
    layer_scores,
    layer_shares,
    released,
    type_shares,
)
from ...io import write_atomic
from ..run_folder import log_dir, log_image

__all__ = ["SelectiveLayerMask"]

Granularity = Literal["layer", "subspace", "both"]


class SelectiveLayerMask(Callback):
    """Track each artifact subspace's learning state per forgery type and mask what one type dominates (module doc).

    Defaults (``docs/method.md``, ``benchmarks/mask_calibration.py``):

    - ``min_share=0.5``: a type carries at least as much of the subspace's fake-type gradient energy as all other
      types together; ``fit_ratio=0.5``: that type's loss is at most half the median fake type's — it is already
      fit, and what the subspace still learns from it is that type's own characteristic, not a shared one.
    - ``momentum=0.99``: the GSNR estimate's time constant 1/(1 − β) = 100 steps equals ``interval`` (n_eff ≈ 199);
      the smallest momentum whose single readings are within 15% of the truth for GSNR ≥ 0.1 on a 64-coordinate
      subspace.
    - ``min_gsnr=0.001`` per sample: a subspace whose per-sample gradients need more than 1/min_gsnr = 1000 samples
      for their mean to stand out of their spread is fitting noise. Independent samples make the batch GSNR
      B × the per-sample one, so the threshold means the same at any batch size.
    - ``warmup_steps=500`` = 5 time constants; ``hysteresis=0.2`` is wider than the estimate's relative error at
      realistic subspace sizes, so one noisy reading does not flap a mask.

    Args:
        enabled: false keeps the statistics, decisions and logs but never masks (the ablation).
        granularity: ``layer``, ``subspace`` or ``both`` (which rules run: layer rule / type + gsnr rules / all).
        warmup_steps: optimizer steps before the first decision; at least 4 (the estimate needs 4 samples).
        interval: optimizer steps between decisions.
        keep_ratio: null: the layer rule masks layers dominated by one fit type (measured); a share in (0, 1]: the
            layer rule keeps that share of layers by per-sample GSNR instead (a fixed share).
        min_gsnr: gsnr rule: mask a subspace whose per-sample GSNR is below this; 0 turns the rule off.
        min_share: type rule: the dominant type's share of the gradient energy, in (0, 1].
        fit_ratio: type rule: the dominant type's loss relative to the median fake type's, in (0, 1].
        type_probes: optimizer steps before each decision whose batch is probed per type (at most ``interval`` of
            them are); 0 turns the type statistics (and the type and measured layer rules) off.
        hysteresis: relative margin a masked entry must clear to be released (and a kept layer's score bonus under
            ``keep_ratio``), in [0, 1).
        momentum: β of the exponentially weighted gradient moments, in [0.5, 1).
        eps: relative variance floor of the GSNR, in units of each coordinate's mean squared gradient (> 0).
        reset_released: delete a released subspace's optimizer state, so it restarts from the new gradient.
    """

    RULES = ("layer", "keep_ratio", "type", "gsnr")

    def __init__(
        self,
        enabled: bool = True,
        granularity: Granularity = "both",
        warmup_steps: int = 500,
        interval: int = 100,
        keep_ratio: float | None = None,
        min_gsnr: float = 0.001,
        min_share: float = 0.5,
        fit_ratio: float = 0.5,
        type_probes: int = 4,
        hysteresis: float = 0.2,
        momentum: float = 0.99,
        eps: float = 1e-8,
        reset_released: bool = True,
    ) -> None:
        if granularity not in ("layer", "subspace", "both"):
            raise ValueError(
                f"SelectiveLayerMask.granularity must be 'layer', 'subspace' or 'both', got {granularity!r}"
            )
        for name, count, low in (
            ("warmup_steps", warmup_steps, MIN_SAMPLES),
            ("interval", interval, 1),
            ("type_probes", type_probes, 0),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < low:
                raise ValueError(f"SelectiveLayerMask.{name} must be an int >= {low}, got {count!r}")
        checks = (
            ("keep_ratio", keep_ratio, keep_ratio is None or 0 < keep_ratio <= 1, "null or in (0, 1]"),
            ("min_gsnr", min_gsnr, min_gsnr >= 0, ">= 0"),
            ("min_share", min_share, 0 < min_share <= 1, "in (0, 1]"),
            ("fit_ratio", fit_ratio, 0 < fit_ratio <= 1, "in (0, 1]"),
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
        self.min_share = min_share
        self.fit_ratio = fit_ratio
        self.type_probes = type_probes
        self.hysteresis = hysteresis
        self.momentum = momentum
        self.eps = eps
        self.reset_released = reset_released
        self.steps = 0  # optimizer steps seen
        self.samples = 0  # training samples behind those steps (all ranks): the per-sample GSNR's B
        self.names: list[str] = []  # "<layer>/<subspace index>", in model order
        self.layers: list[str] = []
        self.type_names: list[str] = []  # forgery-type vocabulary (the model's `forgery_types`, else "type<i>")
        # Per coordinate of every subspace's flattened (U, s, V), concatenated in model order.
        self.moments = GradientMoments.zeros(0, momentum)
        self.layer_kept = torch.zeros(0, dtype=torch.bool)  # layer rule's state, per layer
        self.gsnr_masked = torch.zeros(0, dtype=torch.bool)  # gsnr rule's state, per subspace (with hysteresis)
        self.type_masked = torch.zeros(0, dtype=torch.bool)  # type rule's state, per subspace
        # Per-type statistics since the previous decision (the probes): energy per (subspace, type), loss sum and
        # sample count per type.
        self.type_energy = torch.zeros(0, 0, dtype=torch.float64)
        self.type_loss = torch.zeros(0, dtype=torch.float64)
        self.type_count = torch.zeros(0, dtype=torch.float64)
        self.fired = dict.fromkeys(self.RULES, 0)  # masks each rule has set (unmasked → masked), whole run
        self.history: list[dict[str, Any]] = []  # one entry per decision, for the JSONL and the heatmap
        self.layer_of = torch.zeros(0, dtype=torch.long)  # per subspace: index into `layers`
        self.lengths = torch.zeros(0, dtype=torch.long)  # per subspace: number of factor coordinates
        self._subspaces: list[ArtifactSubspace] = []
        self._pending_state: dict[str, Any] | None = None
        self._resumed = False
        self._batch: dict[str, Any] | None = None  # the current batch, when it carries forgery types
        self._batch_samples = 0  # samples of this rank since the last optimizer step
        self._warned_untyped = False
        self._vocabulary = False  # type names come from the model (fixed), not from the ids seen

    @property
    def rule_masked(self) -> Tensor:
        """Per subspace: blocked by a subspace rule (type or gsnr)."""
        return self.gsnr_masked | self.type_masked

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
        self.gsnr_masked = torch.zeros(len(subspaces), dtype=torch.bool, device=device)
        self.type_masked = torch.zeros(len(subspaces), dtype=torch.bool, device=device)
        vocabulary = getattr(pl_module, "forgery_types", None)
        self._vocabulary = bool(vocabulary)
        self._set_types(list(vocabulary) if vocabulary else [], device)
        if self._pending_state is not None:
            self._restore(self._pending_state, device)
            self._pending_state = None

    def _set_types(self, names: Sequence[str], device: torch.device) -> None:
        """Size the per-type statistics for ``names`` (keeping what was accumulated for the first types)."""
        count = len(names)
        energy = torch.zeros(len(self.names), count, dtype=torch.float64, device=device)
        loss = torch.zeros(count, dtype=torch.float64, device=device)
        seen = torch.zeros(count, dtype=torch.float64, device=device)
        old = min(count, self.type_loss.numel())
        if old and self.type_energy.shape[0] == len(self.names):
            energy[:, :old] = self.type_energy[:, :old].to(device)
            loss[:old], seen[:old] = self.type_loss[:old].to(device), self.type_count[:old].to(device)
        self.type_names = list(names)
        self.type_energy, self.type_loss, self.type_count = energy, loss, seen

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "samples": self.samples,
            "names": list(self.names),
            "count": self.moments.count,
            "mean_grad": self.moments.mean.cpu(),
            "var_grad": self.moments.var.cpu(),
            "layer_kept": self.layer_kept.cpu(),
            "rule_masked": self.rule_masked.cpu(),
            "gsnr_masked": self.gsnr_masked.cpu(),
            "type_masked": self.type_masked.cpu(),
            "type_names": list(self.type_names),
            "type_energy": self.type_energy.cpu(),
            "type_loss": self.type_loss.cpu(),
            "type_count": self.type_count.cpu(),
            "fired": dict(self.fired),
            "history": self.history,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = dict(state_dict)  # applied once the model's adapters are known
        self._subspaces = []
        self.steps = state_dict["steps"]
        self.samples = state_dict.get("samples", 0)
        self.fired = dict.fromkeys(self.RULES, 0) | state_dict.get("fired", {})
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
        if "type_masked" in state:
            self.gsnr_masked = state["gsnr_masked"].to(device)
            self.type_masked = state["type_masked"].to(device)
            self.type_names = list(state["type_names"])
            self.type_energy = state["type_energy"].to(device)
            self.type_loss = state["type_loss"].to(device)
            self.type_count = state["type_count"].to(device)
        else:  # a checkpoint from before the per-type rules: its subspace masks were the noise rule's
            self.gsnr_masked = state["rule_masked"].to(device)
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

    # --- the batch, for the per-type probes ---

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        try:
            self._batch_samples += extract_batch_size(batch)
        except Exception:  # a batch without a tensor: count it as one sample
            self._batch_samples += 1
        typed = isinstance(batch, dict) and "forgery_type" in batch
        self._batch = batch if typed else None
        if isinstance(batch, dict) and not typed and self.type_probes and not self._warned_untyped:
            self._warned_untyped = True
            rank_zero_warn(
                "SelectiveLayerMask: the training batches carry no `forgery_type`; the per-type statistics and "
                "the type and measured layer rules are skipped (the gsnr rule still runs)",
                category=UserWarning,
            )

    # --- the work, where gradients are final ---

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self._subspaces:
            self._discover(pl_module)
        self.steps += 1
        world = 1 if trainer is None else trainer.world_size
        self.samples += max(self._batch_samples, 1) * world
        self._batch_samples = 0
        self._update_statistics()
        if self._probe_due() and self._batch is not None:
            self._probe(trainer, pl_module, self._batch)
        self._batch = None
        decision = self.steps >= self.warmup_steps and (self.steps - self.warmup_steps) % self.interval == 0
        if decision and self.moments.ready:  # not ready only if steps without gradients were skipped
            before = self.masked
            self._decide(trainer)
            freed = released(before, self.masked)
            if self.reset_released and freed.any():
                self._reset_optimizer_state(optimizer, freed)
            self._record(pl_module, freed)
            self._clear_type_statistics()
        if self.enabled:
            for sub, masked in zip(self._subspaces, self.masked.tolist()):
                if masked:
                    for p in sub.factors():
                        p.grad = None

    def _probe_due(self) -> bool:
        """Whether this step is among the ``type_probes`` steps that end at the next decision."""
        if not self.type_probes:
            return False
        if self.steps <= self.warmup_steps:
            upcoming = self.warmup_steps
        else:
            upcoming = self.warmup_steps + -(-(self.steps - self.warmup_steps) // self.interval) * self.interval
        return upcoming - self.steps < min(self.type_probes, self.interval)

    def _probe(self, trainer: Trainer, pl_module: LightningModule, batch: dict[str, Any]) -> None:
        """Type t's contribution to this step's gradient of every subspace, and each type's loss (module doc)."""
        types = batch["forgery_type"].reshape(-1).long()
        if not self._vocabulary:
            # No vocabulary from the model: name the types by id. Every rank asks at every probe (a collective on
            # all ranks or none), so all agree on how many there are.
            needed = torch.tensor([int(types.max()) + 1], device=self.layer_of.device)
            count = int(trainer.strategy.all_gather(needed).max()) if trainer.world_size > 1 else int(needed)
            if count > len(self.type_names):
                names = self.type_names + [f"type{i}" for i in range(len(self.type_names), max(count, 2))]
                self._set_types(names, self.layer_of.device)
        elif int(types.max()) >= len(self.type_names):
            raise ValueError(
                f"SelectiveLayerMask: a batch has forgery_type {int(types.max())}, but the model's forgery_types "
                f"name {len(self.type_names)} types ({', '.join(self.type_names)})"
            )
        params = [p for sub in self._subspaces for p in sub.factors()]
        root = trainer.strategy.root_device
        devices = [root.index if root.index is not None else torch.cuda.current_device()] if root.type == "cuda" else []
        # Batch-norm running statistics would count this batch twice: restore them (and the RNG) afterwards.
        saved = [
            (b, b.clone()) for m in pl_module.modules() if hasattr(m, "running_mean") for b in m.buffers(recurse=False)
        ]
        total = int(self.lengths.sum())
        grads = torch.zeros(len(self.type_names), total, device=self.layer_of.device)
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            with trainer.precision_plugin.forward_context():
                losses = _sample_loss(pl_module, batch).float().reshape(-1)
            weight = batch.get("weight")
            weight = torch.ones_like(losses) if weight is None else weight.to(losses).reshape(-1)
            types = types.to(losses.device)
            weighted = losses * weight / weight.sum()
            fakes = [t for t in range(1, len(self.type_names)) if bool((types == t).any())]
            for n, t in enumerate(fakes):
                parts = torch.autograd.grad(
                    weighted[types == t].sum(), params, retain_graph=n < len(fakes) - 1, allow_unused=True
                )
                grads[t] = torch.cat(
                    [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(parts, params)]
                )
        for buffer, value in saved:
            buffer.copy_(value)
        losses = losses.detach()
        loss_sum = torch.zeros(len(self.type_names), device=losses.device).index_add_(0, types, losses)
        counts = torch.zeros(len(self.type_names), device=losses.device).index_add_(0, types, torch.ones_like(losses))
        if trainer.world_size > 1:  # the same statistics on every rank: the global batch's
            grads = trainer.strategy.reduce(grads, reduce_op="mean")
            loss_sum = trainer.strategy.reduce(loss_sum, reduce_op="sum")
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        lengths = self.lengths.to(grads.device)
        energy = torch.stack([torch.segment_reduce(row.square(), "sum", lengths=lengths) for row in grads], dim=1)
        device = self.type_energy.device
        self.type_energy += energy.double().to(device)
        self.type_loss += loss_sum.double().to(device)
        self.type_count += counts.double().to(device)

    def _clear_type_statistics(self) -> None:
        self.type_energy.zero_()
        self.type_loss.zero_()
        self.type_count.zero_()

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
        """Per subspace (model order): ``gsnr`` (per sample), ``batch_gsnr``, ``bias`` Σ_j m_j², ``variance``
        Σ_j σ̂²_j and fitting ``strength``.

        ``gsnr`` is NaN until the estimate has enough samples (``adapters.gsnr.estimate_ready``).
        """
        bias, variance = self.moments.segment_sums(self.lengths)
        strength = torch.stack([sub.fitting_strength().float() for sub in self._subspaces])
        batch_gsnr = self.moments.gsnr(self.lengths, self.eps)
        return {
            "bias": bias,
            "variance": variance,
            "batch_gsnr": batch_gsnr,
            "gsnr": batch_gsnr / self.batch_size,
            "strength": strength,
        }

    @property
    def batch_size(self) -> float:
        """B: mean number of samples (all ranks) behind one optimizer step so far."""
        return self.samples / self.steps if self.steps and self.samples else 1.0

    def type_statistics(self) -> dict[str, Tensor]:
        """Since the previous decision: per type ``loss`` (mean, NaN if unseen) and ``present`` (a fake type seen),
        per subspace and type ``shares`` (among the fake types) and per layer and type ``layer_shares`` (volume or
        spread share, the larger: :func:`~masm_lightning.adapters.gsnr.layer_shares`)."""
        fake = torch.arange(len(self.type_names), device=self.type_count.device) >= 1
        present = fake & (self.type_count > 0)
        loss = torch.where(self.type_count > 0, self.type_loss / self.type_count.clamp_min(1), torch.nan)
        layer_energy = torch.zeros(len(self.layers), len(self.type_names), dtype=torch.float64, device=fake.device)
        layer_energy.index_add_(0, self.layer_of.to(fake.device), self.type_energy)
        return {
            "loss": loss,
            "present": present,
            "shares": type_shares(self.type_energy, fake),
            "layer_shares": layer_shares(layer_energy, fake),
        }

    def layer_scores(self, gsnr: Tensor) -> Tensor:
        """Mean GSNR of each layer's subspaces, in ``layers`` order."""
        return layer_scores(gsnr, self.layer_of.to(gsnr.device), len(self.layers))

    @torch.no_grad()
    def _decide(self, trainer: Trainer) -> None:
        gsnr = self.statistics()["gsnr"]
        types = self.type_statistics()
        device = gsnr.device
        h = self.hysteresis
        layer_kept = torch.ones_like(self.layer_kept)
        if self.granularity in ("layer", "both"):
            if self.keep_ratio is not None:
                layer_kept = layer_rule(self.layer_scores(gsnr), self.keep_ratio, self.layer_kept, h)
            else:
                dominated, _ = dominance_rule(
                    types["layer_shares"], types["loss"], types["present"], ~self.layer_kept,
                    self.min_share, self.fit_ratio, h,
                )  # fmt: skip
                layer_kept = ~dominated
        gsnr_masked = torch.zeros_like(self.gsnr_masked)
        type_masked = torch.zeros_like(self.type_masked)
        if self.granularity in ("subspace", "both"):
            if self.min_gsnr > 0:
                gsnr_masked = floor_rule(gsnr, self.gsnr_masked, self.min_gsnr, h)
            type_masked, _ = dominance_rule(
                types["shares"], types["loss"], types["present"], self.type_masked, self.min_share, self.fit_ratio, h
            )
        # Statistics are identical on every rank already; broadcasting makes divergence impossible anyway. CPU
        # copies: a pickled CUDA tensor would land on rank 0's device.
        decided = (layer_kept.cpu(), gsnr_masked.cpu(), type_masked.cpu())
        kept, by_gsnr, by_type = trainer.strategy.broadcast(decided, src=0)
        kept, by_gsnr, by_type = kept.to(device), by_gsnr.to(device), by_type.to(device)
        layer_rule_name = "layer" if self.keep_ratio is None else "keep_ratio"
        self.fired[layer_rule_name] += int((self.layer_kept & ~kept).sum())
        self.fired["type"] += int((by_type & ~self.type_masked.to(device)).sum())
        self.fired["gsnr"] += int((by_gsnr & ~self.gsnr_masked.to(device)).sum())
        self.layer_kept, self.gsnr_masked, self.type_masked = kept, by_gsnr, by_type

    def rules(self) -> list[str | None]:
        """Per subspace: the rule that blocks it now (its layer's rule first), None when it updates."""
        layer_name = "layer" if self.keep_ratio is None else "keep_ratio"
        out: list[str | None] = []
        for layer, by_type, by_gsnr in zip(
            self.layer_of.tolist(), self.type_masked.tolist(), self.gsnr_masked.tolist()
        ):
            if not self.enabled:
                out.append(None)
            elif not bool(self.layer_kept[layer]):
                out.append(layer_name)
            else:
                out.append("type" if by_type else "gsnr" if by_gsnr else None)
        return out

    # --- what users see ---

    def _record(self, pl_module: LightningModule, freed: Tensor) -> None:
        stats = {k: v.tolist() for k, v in self.statistics().items()}
        types = self.type_statistics()
        shares, present = types["shares"].tolist(), types["present"].tolist()
        fake_types = [(t, name) for t, name in enumerate(self.type_names) if present[t]]
        type_loss = {name: (None if v != v else v) for name, v in zip(self.type_names, types["loss"].tolist())}
        masked = self.masked.tolist()
        rules = self.rules()

        def dominant(row: list[float]) -> str | None:
            best = max(fake_types, key=lambda item: row[item[0]], default=None)
            return None if best is None or row[best[0]] <= 0 else best[1]

        entry = {
            "step": self.steps,
            "batch_size": self.batch_size,
            "type_loss": type_loss,
            "fired": dict(self.fired),
            "subspaces": [
                {
                    "layer": self.layers[int(self.layer_of[i])],
                    "subspace": int(name.rsplit("/", 1)[1]),
                    "gsnr": stats["gsnr"][i],
                    "batch_gsnr": stats["batch_gsnr"][i],
                    "bias": stats["bias"][i],
                    "variance": stats["variance"][i],
                    "strength": stats["strength"][i],
                    "shares": {type_name: shares[i][t] for t, type_name in fake_types},
                    "dominant_type": dominant(shares[i]),
                    "masked": masked[i],
                    "rule": rules[i],
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
        metrics |= {f"mask/fired/{rule}": float(count) for rule, count in self.fired.items()}
        metrics |= {f"mask/type_loss/{n}": v for n, v in type_loss.items() if v is not None}
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
        from ...evaluation.plots import mask_heatmap  # matplotlib only when there is something to draw

        log_image(trainer, "mask/layer_masks", mask_heatmap(self.history, folder / "layer_masks.png"))


def _sample_loss(module: LightningModule, batch: dict[str, Any]) -> Tensor:
    """Per-sample training loss: the model's ``sample_loss(batch)`` where it has one, else cross-entropy."""
    method = getattr(module, "sample_loss", None)
    if callable(method):
        out: Tensor = method(batch)
        return out
    return F.cross_entropy(module(batch["image"]), batch["label"], reduction="none")
