"""SelectiveLayerMask: statistics from controlled gradients, the masking rules, and what a mask really stops."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import timm
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from masm_lightning.adapters import MASMConfig, inject_adapters, iter_adapters
from masm_lightning.callbacks import SelectiveLayerMask
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
        self.directions = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
                           for i, (_, p) in enumerate(self._factors())]

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
    trainer = Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                      callbacks=[callback, *trainer_kwargs.pop("callbacks", [])], **trainer_kwargs)
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
    kept = [layer for layer, keep in zip(callback.layers, callback.layer_kept.tolist()) if keep]
    assert sorted(kept) == sorted(set(callback.layers) - set(NOISY_LAYERS))


def _rule_only(masked: list[bool]) -> SelectiveLayerMask:
    callback = SelectiveLayerMask(granularity="subspace", min_gsnr=0.01, max_strength=1.0, hysteresis=0.2)
    callback.layers = ["l0"]
    callback._layer_of = torch.zeros(len(masked), dtype=torch.long)
    callback.layer_kept = torch.ones(1, dtype=torch.bool)
    callback.rule_masked = torch.tensor(masked)
    return callback


def _decide(callback: SelectiveLayerMask, gsnr: list[float], strength: list[float]) -> list[bool]:
    callback.statistics = lambda: {"gsnr": torch.tensor(gsnr), "strength": torch.tensor(strength)}
    callback._decide(SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda obj, src: obj)))
    return callback.masked.tolist()


def test_subspace_rule_trips_on_low_gsnr_or_high_strength_and_releases_with_hysteresis():
    callback = _rule_only([False] * 4)
    # noisy, in the dead band, healthy, over-fitted
    assert _decide(callback, [0.005, 0.011, 0.5, 0.5], [0.1, 0.1, 0.1, 1.5]) == [True, False, False, True]
    # Subspace 0 recovers into the dead band (0.01 < 0.011 < 0.012): it stays masked, no flapping.
    assert _decide(callback, [0.011, 0.011, 0.5, 0.5], [0.1, 0.1, 0.1, 1.5]) == [True, False, False, True]
    # Past min_gsnr·(1 + hysteresis): released. Strength back under max_strength·(1 − hysteresis): released.
    assert _decide(callback, [0.013, 0.011, 0.5, 0.5], [0.1, 0.1, 0.1, 0.7]) == [False, False, False, False]


def test_granularity_both_masks_whole_layers_and_noisy_subspaces_in_kept_layers():
    callback = SelectiveLayerMask(granularity="both", keep_ratio=0.5, min_gsnr=0.01)
    callback.layers = ["a", "b"]
    callback._layer_of = torch.tensor([0, 0, 1, 1])
    callback.layer_kept = torch.ones(2, dtype=torch.bool)
    callback.rule_masked = torch.zeros(4, dtype=torch.bool)
    # layer a scores higher (mean GSNR), but its second subspace is noise; layer b is dropped as a whole.
    assert _decide(callback, [2.0, 0.001, 0.3, 0.2], [0.1] * 4) == [False, True, True, True]
    callback.enabled = False  # the ablation: same statistics and decisions logged, nothing masked
    assert callback.masked.tolist() == [False] * 4


class Snapshot(Callback):
    """Factor values after every optimizer step."""

    def __init__(self) -> None:
        self.values: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append({f"{n}/{i}": p.detach().clone() for i, (n, p) in enumerate(pl_module._factors())})


def test_masked_factors_are_bit_identical_under_adamw_while_unmasked_move(tmp_path):
    callback = SelectiveLayerMask(granularity="layer", warmup_steps=3, interval=100, keep_ratio=0.5)
    snapshot = Snapshot()
    _fit(callback, tmp_path, steps=10, callbacks=[snapshot])
    masked_layers = {layer for layer, keep in zip(callback.layers, callback.layer_kept.tolist()) if not keep}
    assert masked_layers == set(NOISY_LAYERS)
    after_decision, end = snapshot.values[2], snapshot.values[-1]  # the mask applies from step 3's update on
    for key in end:
        layer = key.split("/")[0]
        if layer in masked_layers:
            assert torch.equal(after_decision[key], end[key]), f"{key} moved while masked (momentum or decay leak)"
        else:
            assert not torch.equal(after_decision[key], end[key]), f"{key} should keep training"


def test_gradient_accumulation_gives_one_update_per_optimizer_step(tmp_path):
    callback = SelectiveLayerMask(warmup_steps=2, interval=1)
    _fit(callback, tmp_path, steps=4, accumulate_grad_batches=3)
    assert callback.steps == 4
    assert [entry["step"] for entry in callback.history] == [2, 3, 4]


def test_bf16_mixed_on_cpu(tmp_path):
    callback = SelectiveLayerMask(warmup_steps=3, interval=1)
    _fit(callback, tmp_path, steps=5, precision="bf16-mixed")
    stats = callback.statistics()
    assert all(torch.isfinite(v).all() for v in stats.values())
    assert callback.masked.any()


def test_resume_continues_with_the_same_masks_statistics_and_weights(tmp_path):
    def make():
        return SelectiveLayerMask(granularity="both", warmup_steps=3, interval=2, keep_ratio=0.5, min_gsnr=0.05)

    straight, straight_trainer = _fit(make(), tmp_path / "a", steps=9)

    first = make()
    _model, trainer = _fit(first, tmp_path / "b", steps=5)
    ckpt = tmp_path / "b" / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed_callback = make()
    resumed = ControlledGradients()
    Trainer(max_steps=9, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path / "c",
            callbacks=[resumed_callback]).fit(resumed, ckpt_path=ckpt)

    reference = next(c for c in straight_trainer.callbacks if isinstance(c, SelectiveLayerMask))
    assert resumed_callback.steps == reference.steps == 9
    assert torch.equal(resumed_callback.masked, reference.masked)
    torch.testing.assert_close(resumed_callback.variances, reference.variances)
    for (name, a), (_, b) in zip(resumed._factors(), straight._factors()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_jsonl_and_heatmap_are_written(tmp_path):
    callback = SelectiveLayerMask(warmup_steps=2, interval=2)
    _fit(callback, tmp_path, steps=8)
    lines = (tmp_path / "layer_masks.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["step"] for e in entries] == [2, 4, 6, 8]
    first = entries[0]["subspaces"][0]
    assert {"layer", "subspace", "gsnr", "variance", "strength", "masked"} <= first.keys()
    assert len(entries[0]["subspaces"]) == 8  # 4 layers x 2 subspaces
    assert (tmp_path / "layer_masks.png").stat().st_size > 1000


ARGUMENT_ERRORS = {
    "granularity": (dict(granularity="block"), r"granularity must be 'layer', 'subspace' or 'both', got 'block'"),
    "interval": (dict(interval=0), r"interval must be an int >= 1, got 0"),
    "keep_ratio": (dict(keep_ratio=0.0), r"keep_ratio must be in \(0, 1\], got 0.0"),
    "hysteresis": (dict(hysteresis=1.0), r"hysteresis must be in \[0, 1\), got 1.0"),
    "momentum": (dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
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
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      callbacks=[SelectiveLayerMask()], accelerator="cpu")
    with pytest.raises(ValueError, match="SelectiveLayerMask found no MASM adapters in NoAdapters; remove the "
                                         "callback"):
        trainer.fit(NoAdapters())


def test_an_overflow_step_does_not_poison_the_statistics():
    model = ControlledGradients()
    callback = SelectiveLayerMask()
    callback._discover(model)
    for _, p in model._factors():
        p.grad = torch.full_like(p, float("inf"))
    callback._update_statistics()
    assert torch.equal(callback.variances, torch.zeros_like(callback.variances))
    assert torch.equal(callback.mean_grad, torch.zeros_like(callback.mean_grad))
