"""SelectiveLayerMask per forgery type: every rule fires on a small run, the GSNR is per sample, resume is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from masm_lightning.adapters import MASMConfig, inject_adapters, iter_adapters
from masm_lightning.training.callbacks import SelectiveLayerMask
from tests.callbacks.typed import TypedModel
from tests.helpers import ROOT


def _fit(callback, tmp_path, steps, model=None, **kwargs):
    model = model or TypedModel()
    trainer = Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        callbacks=[callback],
        **kwargs,
    )
    trainer.fit(model, ckpt_path=kwargs.pop("ckpt_path", None))
    return model, trainer


def _mask(**kwargs) -> SelectiveLayerMask:
    return SelectiveLayerMask(**{"warmup_steps": 20, "interval": 10, "momentum": 0.9} | kwargs)


def test_every_rule_fires_and_each_mask_names_its_rule(tmp_path):
    # The frequent type (id 1, half the batch) is fit first and still carries most of every subspace's fake-type
    # gradient: the type rule (subspaces) and the layer rule (layers) block it; noisy subspaces trip the gsnr rule.
    measured = _mask()
    _fit(measured, tmp_path / "measured", steps=60)
    ranked = _mask(keep_ratio=0.5)  # the fixed-share layer rule instead of the measured one
    _fit(ranked, tmp_path / "ranked", steps=30)
    fired = {rule: measured.fired[rule] for rule in ("layer", "type", "gsnr")} | {
        "keep_ratio": ranked.fired["keep_ratio"]
    }
    assert all(count > 0 for count in fired.values()), fired
    assert measured.fired["keep_ratio"] == 0 and ranked.fired["layer"] == 0
    entries = [json.loads(line) for line in (tmp_path / "measured" / "layer_masks.jsonl").read_text().splitlines()]
    rules = {s["rule"] for e in entries for s in e["subspaces"]}
    assert {"layer", "gsnr"} <= rules  # "type" is shadowed by its blocked layer once both fire
    assert entries[-1]["fired"] == measured.fired
    # per subspace and type: the shares among the fake types, and each type's loss
    last = entries[-1]
    assert set(last["type_loss"]) == set(TypedModel.forgery_types)
    shares = last["subspaces"][0]["shares"]
    assert set(shares) == {"unknown", "easy", "subtle"} and sum(shares.values()) == pytest.approx(1.0)
    assert last["type_loss"]["unknown"] < 0.5 * last["type_loss"]["subtle"]  # the frequent type is fit
    assert any(s["dominant_type"] == "unknown" for s in last["subspaces"])
    # the ablation decides the same and blocks nothing
    ablation = _mask(enabled=False)
    _fit(ablation, tmp_path / "ablation", steps=60)
    assert ablation.fired["type"] > 0 and not ablation.masked.any()
    assert all(s["rule"] is None for s in ablation.history[-1]["subspaces"])


def test_without_forgery_types_the_type_rules_are_skipped_with_one_warning(tmp_path):
    class Untyped(TypedModel):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            return {
                k: v for k, v in super().on_before_batch_transfer(batch, dataloader_idx).items() if k != "forgery_type"
            }

    callback = _mask(min_gsnr=0.0)
    with pytest.warns(UserWarning, match="carry no `forgery_type`") as record:
        _fit(callback, tmp_path, steps=40, model=Untyped())
    assert sum("forgery_type" in str(w.message) for w in record) == 1
    assert callback.fired == dict.fromkeys(SelectiveLayerMask.RULES, 0) and not callback.masked.any()


class BatchNoise(LightningModule):
    """Per-sample gradients d + ε_i (ε_i ~ N(0, σ²I)): the batch mean's GSNR is B × the per-sample one."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 32))
        inject_adapters(self.net, MASMConfig(num_subspaces=2, subspace_rank=2, targets=("0",)))
        self.batch_size = batch_size
        gen = torch.Generator().manual_seed(1)
        self.directions = [torch.randn(p.shape, generator=gen) for p in self.factors()]

    def factors(self):
        return [p for _, adapter in iter_adapters(self) for sub in adapter.subspaces for p in sub.factors()]

    def training_step(self, batch, batch_idx):
        noise = torch.Generator().manual_seed(10_000 + batch_idx)
        scale = 20.0 / self.batch_size**0.5  # per-sample GSNR ≈ 1/400, mean of B samples
        return sum(
            (p * (d + scale * torch.randn(d.shape, generator=noise))).sum()
            for p, d in zip(self.factors(), self.directions)
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.factors(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(torch.zeros(200 * self.batch_size, 1), batch_size=self.batch_size)


def test_the_gsnr_is_per_sample_so_a_threshold_means_the_same_at_batch_8_and_64(tmp_path):
    readings = {}
    for batch_size in (8, 64):
        callback = SelectiveLayerMask(warmup_steps=150, interval=50, momentum=0.99, type_probes=0)
        _fit(callback, tmp_path / str(batch_size), steps=150, model=BatchNoise(batch_size))
        stats = callback.statistics()
        assert callback.batch_size == batch_size
        readings[batch_size] = (stats["gsnr"].mean().item(), stats["batch_gsnr"].mean().item())
    (small, small_batch), (large, large_batch) = readings[8], readings[64]
    assert large_batch / small_batch > 5  # the mini-batch GSNR grows with the batch (8x here)
    assert large / small == pytest.approx(1.0, rel=0.25)  # the per-sample one does not
    assert small == pytest.approx(1 / 400, rel=0.3)


# A mid-epoch checkpoint of a plain DataLoader, on purpose: the batches follow the optimizer step, not the loader.
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_resume_keeps_the_per_type_statistics_and_decisions_exact(tmp_path):
    straight = _mask()
    straight_model, _ = _fit(straight, tmp_path / "a", steps=45)
    first = _mask()
    _, trainer = _fit(first, tmp_path / "b", steps=37)  # inside the probe window before step 40's decision
    ckpt = tmp_path / "b" / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = _mask()
    model = TypedModel()
    Trainer(
        max_steps=45,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path / "c",
        callbacks=[resumed],
    ).fit(model, ckpt_path=ckpt)
    assert resumed.history == straight.history and resumed.fired == straight.fired
    for key in ("type_energy", "type_loss", "type_count", "layer_kept", "gsnr_masked", "type_masked", "mean_grad"):
        assert torch.equal(resumed.state_dict()[key], straight.state_dict()[key]), key
    for a, b in zip(model.parameters(), straight_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_two_ranks_keep_equal_per_type_statistics_and_decisions(tmp_path):
    # Each rank draws its own typed batches; the per-type gradients are averaged across ranks, so the statistics
    # and the decisions are the global batch's on both.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tests.callbacks.typed", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first["history"] and first["fired"]["type"] > 0
    assert first["history"] == second["history"] and first["fired"] == second["fired"]
    for key in ("type_energy", "type_loss", "type_count", "layer_kept", "gsnr_masked", "type_masked", "mean_grad"):
        assert torch.equal(first[key], second[key]), key
