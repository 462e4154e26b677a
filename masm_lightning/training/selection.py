"""FMSD (the paper's v3 reading): choose the forgery-sensitive layers from gradient bias/variance, then decompose.

"evaluates the bias-variance characteristics of layer-wise gradients to identify forgery-sensitive layers, thereby
selectively updating them" (arXiv 2601.01041 v3). Before any adapter exists and before any update, B training
batches go through the pretrained backbone and the (freshly initialised) head; for every candidate Linear l (the
layers ``MASMConfig.targets``/``blocks`` name) the full weight gradient G_b = ∂L_b/∂W_l is recorded, and

    GSNR_l = max(0, mean_j r_j)    over the coordinates j of W_l

with the per-coordinate estimator of :mod:`masm_lightning.adapters.gsnr` at uniform weights (β = 1: the
plain mean and unbiased variance of the B samples, ``r_j = (B − 3)/(B − 1) · ḡ_j²/σ̂_j² − 1/B``). The layers with the
top ``keep_ratio`` share of scores (``rule: top``) or with ``GSNR_l ≥ threshold`` (``rule: threshold``; at least the
best layer) are decomposed; every other candidate stays a frozen Linear. L is the training loss without
regularisers (there are no factors yet), under the trainer's precision; under DDP each rank draws its own batches
and the gradients are averaged across ranks before they enter the statistic, as in training.

The result (layer names and every candidate's score) is logged, written to ``layer_selection.json`` in the run
folder, stored in the hyper-parameters (``selection.layers``) and in the checkpoint, so loading the checkpoint
rebuilds adapters on the same layers without running the selection again.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn

from ..adapters.gsnr import MIN_SAMPLES, GradientMoments, layer_rule
from ..io import write_atomic
from .run_folder import log_dir

__all__ = ["LayerSelection", "choose_layers", "fit_head", "gradient_gsnr", "select_layers", "tail_gradient"]

Rule = Literal["top", "threshold"]
Head = Literal["fit", "random"]
Score = Literal["tail", "weight"]


@dataclass
class LayerSelection:
    """FMSD's selection phase: which candidate layers get adapters (see module doc).

    Args:
        batches: B, training batches whose gradients are measured (no update); at least 4. A smaller training
            set is read again, with fresh shuffling and augmentation.
        rule: ``top`` keeps the ``keep_ratio`` share of candidates with the highest GSNR; ``threshold`` keeps those
            with GSNR ≥ ``threshold`` (at least the best one).
        keep_ratio: share of candidates kept by ``rule: top``, in (0, 1]; rounded up, at least one layer.
        threshold: GSNR bar of ``rule: threshold``, >= 0.
        layers: the selected layers (names inside the backbone, e.g. ``blocks.3.attn.qkv``). Filled in by the
            selection; give them to reuse a selection without running it.
        head: ``fit``: before scoring, the head is fitted on the frozen features of the selection batches (L2-
            regularised logistic regression, a strictly convex problem: the same head from any initialisation), so
            the scores do not depend on the random head; it is restored afterwards, training starts as without the
            phase. ``random``: score with the freshly initialised head.
        score: ``tail``: the GSNR of the gradient of what will be trained — the artifact factors (U, s, V of the
            trailing singular triplets that the adapters will hold) at injection; ``weight``: of the full weight.
        head_l2: L2 strength of the fitted head's weights (> 0: it makes the fit unique).
    """

    batches: int = 32
    rule: Rule = "top"
    keep_ratio: float = 0.5
    threshold: float = 0.05
    layers: tuple[str, ...] | None = None
    head: Head = "fit"
    score: Score = "tail"
    head_l2: float = 1e-2

    def __post_init__(self) -> None:
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < MIN_SAMPLES:
            raise ValueError(
                f"LayerSelection.batches must be an int >= {MIN_SAMPLES} (the GSNR estimate needs "
                f"{MIN_SAMPLES} samples), got {self.batches!r}"
            )
        if self.rule not in ("top", "threshold"):
            raise ValueError(f"LayerSelection.rule must be 'top' or 'threshold', got {self.rule!r}")
        if not 0 < self.keep_ratio <= 1:
            raise ValueError(f"LayerSelection.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not self.threshold >= 0:
            raise ValueError(f"LayerSelection.threshold must be >= 0, got {self.threshold!r}")
        if self.head not in ("fit", "random"):
            raise ValueError(f"LayerSelection.head must be 'fit' or 'random', got {self.head!r}")
        if self.score not in ("tail", "weight"):
            raise ValueError(f"LayerSelection.score must be 'tail' or 'weight', got {self.score!r}")
        if not self.head_l2 > 0:
            raise ValueError(f"LayerSelection.head_l2 must be > 0, got {self.head_l2!r}")
        if self.layers is not None:
            if isinstance(self.layers, str):
                self.layers = (self.layers,)
            self.layers = tuple(self.layers)
            if not self.layers or any(not isinstance(name, str) or not name for name in self.layers):
                raise ValueError(
                    f"LayerSelection.layers must be null or a non-empty list of layer names, got {self.layers!r}"
                )


def gradient_gsnr(
    model: nn.Module,
    names: Sequence[str],
    batches: Iterable[Any],
    loss_fn: Callable[[Any], Tensor],
    reduce: Callable[[Tensor], Tensor] | None = None,
    transforms: dict[str, Callable[[Tensor], Tensor]] | None = None,
) -> dict[str, float]:
    """GSNR of each named Linear's weight gradient (or of ``transforms[name]`` of it) over ``batches``; no update.

    Pure torch. Every parameter's ``requires_grad`` and ``.grad`` is as before on return; only the named weights
    take gradients meanwhile.

    Args:
        model: holds the Linear layers ``names`` (qualified names from ``model.named_modules()``).
        names: candidate layers.
        batches: each goes through ``loss_fn`` once (already on the model's device).
        loss_fn: batch → scalar loss.
        reduce: applied to each gradient before it is recorded (e.g. an all-reduce mean across ranks).
        transforms: per name, a linear map of the weight gradient whose coordinates are scored instead (e.g.
            :func:`tail_gradient`: the gradient of the artifact factors); applied before ``reduce``.

    Returns:
        Score per name, in the order of ``names``.
    """
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in names}
    flags = {p: (p.requires_grad, p.grad) for p in model.parameters()}
    transforms = transforms or {}
    moments: dict[str, GradientMoments] = {}
    try:
        model.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        for batch in batches:
            loss_fn(batch).backward()
            for name, w in weights.items():
                g = w.grad.detach().float()
                if name in transforms:
                    g = transforms[name](g).reshape(-1)
                if name not in moments:
                    moments[name] = GradientMoments.zeros(g.numel(), momentum=1.0, device=g.device)
                moments[name].update(g if reduce is None else reduce(g))
                w.grad = None
    finally:
        for p, (requires_grad, grad) in flags.items():
            p.requires_grad_(requires_grad)
            p.grad = grad
    counts = {m.count for m in moments.values()} or {0}
    if len(moments) < len(weights) or not all(m.ready for m in moments.values()):
        raise ValueError(f"gradient_gsnr got {min(counts)} usable batches; the estimate needs at least {MIN_SAMPLES}")
    return {name: moments[name].gsnr().item() for name in names}


def tail_gradient(weight: Tensor, tail: int, parts: int = 1) -> Callable[[Tensor], Tensor]:
    """The map from a weight gradient G to the gradient of the artifact factors that injection would create.

    Per row block of ``weight`` (``parts`` stacked projections, e.g. 3 for a split fused ``qkv``), the trailing
    ``tail`` singular triplets (U_t, s_t, V_t) are what the adapters train; at injection ``W_eff = W``, so
    ``∂L/∂U_k = G V_k diag(s_k)``, ``∂L/∂V_k = Gᵀ U_k diag(s_k)``, ``∂L/∂s_k = diag(U_kᵀ G V_k)``. The map returns
    ``[G V_t, Gᵀ U_t, diag(U_tᵀ G V_t)]`` flattened: the same coordinates up to a fixed positive scale s per column,
    which a per-coordinate GSNR does not see. A conv weight (out, in, 1, 1) is read as its (out, in) matrix.
    """
    matrix = weight.detach().reshape(weight.shape[0], -1).float()
    rows = matrix.shape[0] // parts
    bases = []
    for i in range(parts):
        u, _, vh = torch.linalg.svd(matrix[i * rows : (i + 1) * rows], full_matrices=False)
        rank = vh.shape[0]
        bases.append((u[:, rank - tail :].contiguous(), vh[rank - tail :].mT.contiguous()))

    def apply(grad: Tensor) -> Tensor:
        g = grad.reshape(grad.shape[0], -1).float()
        pieces = []
        for i, (u, v) in enumerate(bases):
            block = g[i * rows : (i + 1) * rows]
            gv = block @ v  # (m, T)
            pieces += [gv.reshape(-1), (block.mT @ u).reshape(-1), (u * gv).sum(0)]
        return torch.cat(pieces)

    return apply


@torch.no_grad()
def fit_head(head: nn.Linear, features: Tensor, labels: Tensor, l2: float = 1e-3, iterations: int = 500) -> float:
    """Fit ``head`` in place to ``features`` → ``labels``: L2-regularised multinomial logistic regression.

    The objective ``CE + l2/2·‖W‖²`` is strictly convex in W (the biases only shift every logit alike), so L-BFGS
    reaches the same logit differences from any initialisation: a selection scored with the fitted head does not
    depend on the head's seed. Deterministic (no randomness). Returns the final objective.
    """
    x = features.detach().float()
    y = labels.detach().long()
    weight = head.weight.detach().float().clone().requires_grad_(True)
    bias = None if head.bias is None else head.bias.detach().float().clone().requires_grad_(True)
    params = [weight] if bias is None else [weight, bias]
    optimizer = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=iterations,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        optimizer.zero_grad()
        logits = x @ weight.mT + (0.0 if bias is None else bias)
        loss = nn.functional.cross_entropy(logits, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
        final = float(objective().detach())
    head.weight.copy_(weight.to(head.weight.dtype))
    if bias is not None and head.bias is not None:
        head.bias.copy_(bias.to(head.bias.dtype))
    return final


def choose_layers(
    scores: dict[str, float], rule: Rule = "top", keep_ratio: float = 0.5, threshold: float = 0.05
) -> list[str]:
    """The layers ``rule`` keeps, in the order of ``scores`` (see :class:`LayerSelection`)."""
    names = list(scores)
    values = torch.tensor([scores[n] for n in names], dtype=torch.float64)
    if rule == "top":
        keep = layer_rule(values, keep_ratio)
    else:
        keep = values >= threshold
        if not keep.any():
            best = names[int(values.nan_to_num(nan=-math.inf).argmax())]
            rank_zero_warn(
                f"LayerSelection: no layer reaches GSNR {threshold} (best: {best} with "
                f"{scores[best]:.4g}); keeping only {best}: lower `threshold` or use rule 'top'"
            )
            keep[names.index(best)] = True
    return [n for n, k in zip(names, keep.tolist()) if k]


def _train_batches(trainer: Trainer, module: LightningModule, count: int) -> list[Any]:
    """``count`` training batches for this rank (every world_size-th batch, offset by rank), on its device.

    A training set with fewer batches is read again (fresh shuffling and augmentation), as training would.
    """
    # Trainer.datamodule is set by Lightning's data connector, outside Trainer's annotations.
    datamodule: LightningDataModule | None = trainer.datamodule  # type: ignore[attr-defined]
    if datamodule is not None:
        loader = datamodule.train_dataloader()
    elif is_overridden("train_dataloader", module):
        loader = module.train_dataloader()
    else:
        raise ValueError(
            "LayerSelection needs training batches: fit with a data module or a model that defines train_dataloader"
        )
    batches: list[Any] = []
    while len(batches) < count:
        before = len(batches)
        for i, batch in enumerate(loader):
            if i % trainer.world_size == trainer.global_rank:
                batches.append(move_data_to_device(batch, trainer.strategy.root_device))
                if len(batches) == count:
                    break
        if len(batches) == before:
            raise ValueError("LayerSelection found no training batch for this process: the training set is empty")
    return batches


def select_layers(
    trainer: Trainer,
    module: LightningModule,
    candidates: Sequence[str],
    selection: LayerSelection,
    loss_fn: Callable[[Any], Tensor],
    prefix: str = "",
    head: nn.Linear | None = None,
    features: Callable[[Any], Tensor] | None = None,
    tails: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Run the selection phase in a fit (see module doc): score ``candidates``, choose, report.

    ``candidates`` are named relative to ``module.<prefix>`` (e.g. ``prefix="backbone."``); so are the results.
    With ``selection.head == "fit"``, ``head`` is fitted (:func:`fit_head`) on ``features(batch)`` and
    ``batch["label"]`` of the selection batches (gathered from every rank) before scoring, and restored afterwards.
    With ``selection.score == "tail"``, ``tails[name] = (T, parts)`` gives each candidate's artifact tail
    (:func:`tail_gradient`).

    Global RNG states (torch, CUDA, numpy, random) are restored afterwards, so training draws what it would have
    drawn without the phase.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    root = trainer.strategy.root_device
    devices = [root.index if root.index is not None else torch.cuda.current_device()] if root.type == "cuda" else []
    was_training = module.training
    with torch.random.fork_rng(devices=devices):
        module.to(trainer.strategy.root_device).train()
        batches = _train_batches(trainer, module, selection.batches)
        reduce = (lambda g: trainer.strategy.reduce(g, reduce_op="mean")) if trainer.world_size > 1 else None

        def loss(batch: Any) -> Tensor:
            with trainer.precision_plugin.forward_context():
                return loss_fn(batch)

        saved_head = None
        if selection.head == "fit" and head is not None and features is not None:
            saved_head = {k: v.detach().clone() for k, v in head.state_dict().items()}
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                x = torch.cat([features(b).float() for b in batches])
            y = torch.cat([b["label"] for b in batches])
            if trainer.world_size > 1:  # every rank fits the same head on every rank's features
                x = trainer.strategy.all_gather(x).reshape(-1, x.shape[-1])
                y = trainer.strategy.all_gather(y).reshape(-1)
            fit_head(head, x, y, selection.head_l2)
        modules = dict(module.named_modules())
        transforms = None
        if selection.score == "tail" and tails:
            transforms = {
                prefix + name: tail_gradient(modules[prefix + name].weight, *tails[name])
                for name in candidates
                if name in tails
            }
        try:
            full = gradient_gsnr(module, [prefix + name for name in candidates], batches, loss, reduce, transforms)
        finally:
            if saved_head is not None and head is not None:
                head.load_state_dict(saved_head)
        scores = {name: full[prefix + name] for name in candidates}
        del batches
    random.setstate(py_state)
    np.random.set_state(np_state)
    module.train(was_training)
    layers = choose_layers(scores, selection.rule, selection.keep_ratio, selection.threshold)
    layers, scores = trainer.strategy.broadcast((layers, scores), src=0)
    _report(trainer, selection, layers, scores)
    return layers, scores


def _report(trainer: Trainer, selection: LayerSelection, layers: list[str], scores: dict[str, float]) -> None:
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    lines = [f"  {'*' if n in layers else ' '} {scores[n]:10.4g}  {n}" for n in ranked]
    folder = log_dir(trainer)  # every rank: a collective under DDP
    path = folder / "layer_selection.json"
    for logger in trainer.loggers:
        logger.log_hyperparams({"selection": {"layers": layers, "batches": selection.batches}})
        logger.log_metrics({f"selection/gsnr/{n}": s for n, s in scores.items()}, step=0)
    if trainer.is_global_zero:
        record = {
            "head": selection.head,
            "score": selection.score,
            "rule": selection.rule,
            "keep_ratio": selection.keep_ratio,
            "threshold": selection.threshold,
            "batches": selection.batches,
            "layers": layers,
            "scores": scores,
        }
        write_atomic(path, json.dumps(record, indent=1) + "\n")
    rank_zero_info(
        f"FMSD layer selection: {len(layers)} of {len(scores)} candidate layers get adapters "
        f"(* = selected, by gradient GSNR over {selection.batches} batches), written to {path}\n" + "\n".join(lines)
    )
