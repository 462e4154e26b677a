"""RandomSubspaceMask: replays a mask trace's counts with random choices, and a masked subspace really stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from masm_lightning.adapters import MASMConfig, inject_adapters, iter_adapters
from masm_lightning.training.callbacks import RandomSubspaceMask, SelectiveLayerMask
from masm_lightning.training.callbacks.random_mask import mask_counts
from tests.helpers import TINY_VIT, TINY_VIT_KWARGS


class NoisyFactors(LightningModule):
    """Tiny ViT with adapters whose factor gradients are fresh noise every step (``loss = Σ ⟨p, g⟩``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = timm.create_model(TINY_VIT, pretrained=False, **TINY_VIT_KWARGS)
        inject_adapters(self.backbone, MASMConfig(num_subspaces=2, subspace_rank=2, targets=("attn.proj", "mlp.fc2")))

    def factors(self) -> list[list[torch.nn.Parameter]]:
        return [list(sub.factors()) for _, adapter in iter_adapters(self) for sub in adapter.subspaces]

    def training_step(self, batch, batch_idx):
        noise = torch.Generator().manual_seed(100 + self.global_step)
        return sum((p * torch.randn(p.shape, generator=noise)).sum() for sub in self.factors() for p in sub)

    def configure_optimizers(self):
        return torch.optim.Adam([p for sub in self.factors() for p in sub], lr=1e-2)


class MovedSubspaces(Callback):
    """Per optimizer step: which subspaces' factors changed."""

    def __init__(self) -> None:
        self.moved: list[list[bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before = [[p.detach().clone() for p in sub] for sub in pl_module.factors()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = pl_module.factors()
        self.moved.append([any(not torch.equal(a, p) for a, p in zip(b, s)) for b, s in zip(self.before, now)])


def fit(tmp_path: Path, callbacks: list[Callback], steps: int) -> NoisyFactors:
    model = NoisyFactors()
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    trainer.fit(model, DataLoader(range(steps), batch_size=None))
    return model


def test_masks_the_traced_count_at_each_decision_and_masked_subspaces_do_not_move(tmp_path: Path) -> None:
    moved = MovedSubspaces()
    fit(tmp_path, [RandomSubspaceMask({2: 3, 4: 1}, seed=0), moved], steps=5)
    total = len(moved.moved[0])  # 4 layers x 2 subspaces
    frozen = [row.count(False) for row in moved.moved]
    assert frozen == [0, 3, 3, 1, 1]  # a decision's mask holds until the next one
    assert total == 8
    trace = [json.loads(line) for line in (tmp_path / "random_masks.jsonl").read_text().splitlines()]
    assert len(trace[0]["names"]) == total
    assert [(e["step"], len(e["masked"])) for e in trace[1:]] == [(2, 3), (4, 1)]
    stopped = [i for i, m in enumerate(moved.moved[1]) if not m]
    assert stopped == trace[1]["masked"]


def test_same_seed_same_masks_other_seed_other_masks() -> None:
    mask = RandomSubspaceMask({5: 10}, seed=3)
    again, other = RandomSubspaceMask({5: 10}, seed=3), RandomSubspaceMask({5: 10}, seed=4)
    first = mask.draw(5, 10, 40)
    assert int(first.sum()) == 10
    assert torch.equal(first, again.draw(5, 10, 40))
    assert not torch.equal(first, other.draw(5, 10, 40))
    assert not torch.equal(first, mask.draw(6, 10, 40))  # each decision draws anew


def test_replays_a_selective_layer_mask_trace(tmp_path: Path) -> None:
    rule = SelectiveLayerMask(warmup_steps=4, interval=2, momentum=0.5, min_gsnr=0.05)
    fit(tmp_path / "rule", [rule], steps=9)
    counts = mask_counts(tmp_path / "rule" / "layer_masks.jsonl")
    assert list(counts) == [4, 6, 8]
    assert counts == {e["step"]: sum(s["masked"] for s in e["subspaces"]) for e in rule.history}
    assert any(counts.values())  # noise gradients: the rule masks something

    control = RandomSubspaceMask(tmp_path / "rule" / "layer_masks.jsonl", seed=0)
    fit(tmp_path / "control", [control], steps=9)
    assert [(e["step"], len(e["masked"])) for e in control.history] == list(counts.items())


def test_a_trace_that_is_not_a_mask_trace_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "layer_masks.jsonl"
    path.write_text('{"step": 4, "masked": 2}\n{"step": 6}\n')
    with pytest.raises(ValueError, match=r"layer_masks.jsonl:2: .*'subspaces'"):
        mask_counts(path)
    with pytest.raises(ValueError, match="masks more subspaces than the model has"):
        fit(tmp_path, [RandomSubspaceMask({2: 9})], steps=2)
