"""SelectiveLayerMask: statistics from controlled gradients, the masking rules, and what a mask really stops."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from masm_lightning.adapters import MASMConfig, inject_adapters, iter_adapters
from masm_lightning.training.callbacks import SelectiveLayerMask
from tests.helpers import TINY_VIT, TINY_VIT_KWARGS

NOISY_LAYERS = ("backbone.blocks.0.mlp.fc2", "backbone.blocks.1.attn.proj")


class ControlledGradients(LightningModule):
    """Each factor's gradient is chosen: a fixed direction (consistent layers) or fresh noise (noisy layers).

    The loss is ``Σ ⟨p, g⟩`` over the artifact factors, so ``p.grad == g`` exactly. Noise is drawn from a generator
    seeded by the step, so a resumed run sees the same gradients as an uninterrupted one.
    """

    def __init__(self, noisy: tuple[str, ...] = NOISY_LAYERS, weight_decay: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = timm.create_model(TINY_VIT, pretrained=False, **TINY_VIT_KWARGS)
        inject_adapters(self.backbone, MASMConfig(num_subspaces=2, subspace_rank=2, targets=("attn.proj", "mlp.fc2")))
        self.noisy = set(noisy)
        self.weight_decay = weight_decay
        self.directions = [
            torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, (_, p) in enumerate(self._factors())
        ]

    def _factors(self):
        return [(name, p) for name, adapter in iter_adapters(self) for sub in adapter.subspaces for p in sub.factors()]

    def training_step(self, batch, batch_idx):
        noise = torch.Generator().manual_seed(1000 + self.global_step * 7 + batch_idx)
        loss = 0.0
        for (name, p), direction in zip(self._factors(), self.directions):
            g = torch.randn(p.shape, generator=noise) if name in self.noisy else direction
            loss = loss + (p * g.to(p.dtype)).sum()
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for _, p in self._factors()], lr=1e-3, weight_decay=self.weight_decay)

    def train_dataloader(self):
        return DataLoader(torch.zeros(64, 1), batch_size=1)


def _fit(callback: SelectiveLayerMask, tmp_path, steps: int, **trainer_kwargs) -> tuple[ControlledGradients, Trainer]:
    model = ControlledGradients()
    trainer = Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        callbacks=[callback, *trainer_kwargs.pop("callbacks", [])],
        **trainer_kwargs,
    )
    trainer.fit(model)
    return model, trainer


def _layer_gsnr(callback: SelectiveLayerMask) -> dict[str, float]:
    return dict(zip(callback.layers, callback.layer_scores(callback.statistics()["gsnr"]).tolist()))


def test_consistent_gradients_have_high_gsnr_and_the_layer_rule_keeps_them(tmp_path):
    callback = SelectiveLayerMask(granularity="layer", warmup_steps=20, interval=5, keep_ratio=0.5)
    _fit(callback, tmp_path, steps=30)
    gsnr = _layer_gsnr(callback)
    consistent = [v for k, v in gsnr.items() if k not in NOISY_LAYERS]
    noisy = [v for k, v in gsnr.items() if k in NOISY_LAYERS]
    assert min(consistent) > 100 * max(noisy)
    assert max(noisy) < 0.2  # zero-mean noise: the moving mean is small next to the spread
    assert max(noisy) < 0.01  # the unbiased estimate reads pure noise near 0 (30 steps, n_eff ≈ 26)
    kept = [layer for layer, keep in zip(callback.layers, callback.layer_kept.tolist()) if keep]
    assert sorted(kept) == sorted(set(callback.layers) - set(NOISY_LAYERS))


class Snapshot(Callback):
    """Factor values after every optimizer step."""

    def __init__(self) -> None:
        self.values: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append({f"{n}/{i}": p.detach().clone() for i, (n, p) in enumerate(pl_module._factors())})


def test_masked_factors_are_bit_identical_under_adamw_while_unmasked_move(tmp_path):
    callback = SelectiveLayerMask(granularity="layer", warmup_steps=4, interval=100, keep_ratio=0.5)
    snapshot = Snapshot()
    _fit(callback, tmp_path, steps=10, callbacks=[snapshot])
    masked_layers = {layer for layer, keep in zip(callback.layers, callback.layer_kept.tolist()) if not keep}
    assert masked_layers == set(NOISY_LAYERS)
    after_decision, end = snapshot.values[3], snapshot.values[-1]  # the mask applies from step 4's update on
    for key in end:
        layer = key.split("/")[0]
        if layer in masked_layers:
            assert torch.equal(after_decision[key], end[key]), f"{key} moved while masked (momentum or decay leak)"
        else:
            assert not torch.equal(after_decision[key], end[key]), f"{key} should keep training"


def test_gradient_accumulation_gives_one_update_per_optimizer_step(tmp_path):
    callback = SelectiveLayerMask(warmup_steps=4, interval=1)
    _fit(callback, tmp_path, steps=6, accumulate_grad_batches=3)
    assert callback.steps == 6
    assert [entry["step"] for entry in callback.history] == [4, 5, 6]


def test_bf16_mixed_on_cpu(tmp_path):
    callback = SelectiveLayerMask(warmup_steps=4, interval=1)
    _fit(callback, tmp_path, steps=6, precision="bf16-mixed")
    stats = callback.statistics()
    assert all(torch.isfinite(v).all() for v in stats.values())
    assert callback.masked.any()


def test_resume_continues_with_the_same_masks_statistics_and_weights(tmp_path):
    def make():
        return SelectiveLayerMask(granularity="both", warmup_steps=4, interval=2, keep_ratio=0.5, min_gsnr=0.05)

    straight, straight_trainer = _fit(make(), tmp_path / "a", steps=9)

    first = make()
    _, trainer = _fit(first, tmp_path / "b", steps=5)
    ckpt = tmp_path / "b" / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed_callback = make()
    resumed = ControlledGradients()
    # A mid-epoch checkpoint of a plain DataLoader, on purpose (the model's batches do not depend on the loader):
    # Lightning says the loader cannot resume, which is this scenario.
    with pytest.warns(UserWarning, match="ended before the epoch ended and your dataloader is not resumable"):
        Trainer(
            max_steps=9,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            default_root_dir=tmp_path / "c",
            callbacks=[resumed_callback],
        ).fit(resumed, ckpt_path=ckpt)

    reference = next(c for c in straight_trainer.callbacks if isinstance(c, SelectiveLayerMask))
    assert resumed_callback.steps == reference.steps == 9
    assert torch.equal(resumed_callback.masked, reference.masked)
    for key in ("count", "mean_grad", "var_grad"):
        torch.testing.assert_close(resumed_callback.state_dict()[key], reference.state_dict()[key], msg=key)
    assert resumed_callback.history == reference.history
    for (name, a), (_, b) in zip(resumed._factors(), straight._factors()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_jsonl_and_heatmap_are_written(tmp_path):
    callback = SelectiveLayerMask(warmup_steps=4, interval=2)
    _fit(callback, tmp_path, steps=10)
    lines = (tmp_path / "layer_masks.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["step"] for e in entries] == [4, 6, 8, 10]
    first = entries[0]["subspaces"][0]
    assert {"layer", "subspace", "gsnr", "batch_gsnr", "variance", "strength", "masked", "rule"} <= first.keys()
    for entry in entries:  # every masked subspace names the rule that blocked it, an updating one none
        assert all((s["rule"] is not None) == s["masked"] for s in entry["subspaces"])
    assert len(entries[0]["subspaces"]) == 8  # 4 layers x 2 subspaces
    assert (tmp_path / "layer_masks.png").stat().st_size > 1000


ARGUMENT_ERRORS = {
    "granularity": (dict(granularity="block"), r"granularity must be 'layer', 'subspace' or 'both', got 'block'"),
    "interval": (dict(interval=0), r"interval must be an int >= 1, got 0"),
    "warmup_steps": (dict(warmup_steps=2), r"warmup_steps must be an int >= 4, got 2"),
    "keep_ratio": (dict(keep_ratio=0.0), r"keep_ratio must be null or in \(0, 1\], got 0.0"),
    "hysteresis": (dict(hysteresis=1.0), r"hysteresis must be in \[0, 1\), got 1.0"),
    "momentum": (dict(momentum=1.0), r"momentum must be in \[0.5, 1\), got 1.0"),
    "momentum_low": (dict(momentum=0.2), r"momentum must be in \[0.5, 1\), got 0.2"),
}


@pytest.mark.parametrize(("kwargs", "message"), ARGUMENT_ERRORS.values(), ids=ARGUMENT_ERRORS.keys())
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectiveLayerMask(**kwargs)


class NoAdapters(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - 1).square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.zeros(4, 1), batch_size=1)


def test_a_model_without_adapters_is_refused_clearly():
    trainer = Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[SelectiveLayerMask()],
        accelerator="cpu",
    )
    with pytest.raises(
        ValueError, match="SelectiveLayerMask found no MASM adapters in NoAdapters; remove the callback"
    ):
        trainer.fit(NoAdapters())


def test_an_overflow_step_does_not_poison_the_statistics():
    model = ControlledGradients()
    callback = SelectiveLayerMask()
    optimizer = model.configure_optimizers()
    for _, p in model._factors():
        p.grad = torch.full_like(p, float("inf"))
    callback.on_before_optimizer_step(None, model, optimizer)  # no decision before warm-up: no trainer needed
    state = callback.state_dict()
    assert callback.steps == 1 and state["count"] == 0
    assert torch.equal(state["var_grad"], torch.zeros_like(state["var_grad"]))
    assert torch.equal(state["mean_grad"], torch.zeros_like(state["mean_grad"]))


class PhasedGradients(LightningModule):
    """One adapter, one subspace; its gradient is chosen by phase: +d, then pure noise, then −d.

    Adam builds momentum along +d in the first phase; the noise phase masks the subspace (GSNR ≈ 0) and freezes
    that momentum; the −d phase releases it. The loss ``⟨p, g⟩`` makes ``p.grad == g``.
    """

    def __init__(self, phases: tuple[int, int] = (10, 40)) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 8))
        inject_adapters(self.net, MASMConfig(num_subspaces=1, subspace_rank=2, targets=("0",)))
        self.phases = phases
        gen = torch.Generator().manual_seed(5)
        self.directions = [torch.randn(p.shape, generator=gen) for p in self.factors()]
        self.gradients: list[list[torch.Tensor]] = []  # per optimizer step

    def factors(self) -> list[torch.nn.Parameter]:
        return [p for _, adapter in iter_adapters(self) for sub in adapter.subspaces for p in sub.factors()]

    def training_step(self, batch, batch_idx):
        step = self.global_step
        noise = torch.Generator().manual_seed(100 + step)
        if step < self.phases[0]:
            grads = self.directions
        elif step < self.phases[1]:
            grads = [torch.randn(d.shape, generator=noise) for d in self.directions]
        else:
            grads = [-d for d in self.directions]
        self.gradients.append(grads)
        return sum((p * g).sum() for p, g in zip(self.factors(), grads))

    def configure_optimizers(self):
        return torch.optim.Adam(self.factors(), lr=1e-3)

    def train_dataloader(self):
        return DataLoader(torch.zeros(80, 1), batch_size=1)


class FactorSnapshot(Callback):
    def __init__(self) -> None:
        self.values: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append([p.detach().clone() for p in pl_module.factors()])


def _first_step_after_release(tmp_path, reset: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    callback = SelectiveLayerMask(
        granularity="subspace",
        warmup_steps=4,
        interval=1,
        momentum=0.9,
        min_gsnr=0.05,
        reset_released=reset,
    )
    snapshot = FactorSnapshot()
    model = PhasedGradients()
    Trainer(
        max_steps=70,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        callbacks=[callback, snapshot],
    ).fit(model)
    masked = {entry["step"]: entry["subspaces"][0]["masked"] for entry in callback.history}
    assert any(masked[s] for s in range(11, 41)), "the noise phase should mask the subspace"
    release = next(s for s in range(41, 71) if masked[s - 1] and not masked[s])  # optimizer steps count from 1
    before, after = snapshot.values[release - 2], snapshot.values[release - 1]
    return [a - b for a, b in zip(after, before)], model.gradients[release - 1]


def test_a_released_subspace_restarts_its_optimizer_state_and_follows_the_new_gradient(tmp_path):
    steps, grads = _first_step_after_release(tmp_path / "reset", reset=True)
    for step, grad in zip(steps, grads):
        assert ((step * grad) < 0).all(), "every coordinate must move against the new gradient"
    # Without the reset, Adam's momentum from before the mask drags the first step the old way.
    stale, grads = _first_step_after_release(tmp_path / "stale", reset=False)
    assert any(((step * grad) > 0).any() for step, grad in zip(stale, grads))
