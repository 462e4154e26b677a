"""FMSD layer selection: scores from full-weight gradients, adapters only where chosen, kept in the checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from masm_lightning import MASMConfig
from masm_lightning.adapters import inject_adapters, iter_adapters, select_targets
from masm_lightning.training.module import MASMDetector
from masm_lightning.training.selection import LayerSelection, choose_layers, fit_head, gradient_gsnr, tail_gradient
from tests.conftest import TINY_VIT, TINY_VIT_KWARGS

NOISY = ("blocks.0.mlp.fc2", "blocks.1.attn.proj")


def test_layers_whose_gradients_are_noise_score_lowest_and_nothing_is_updated(make_vit):
    vit = make_vit()
    head = torch.nn.Linear(vit.num_features, 2)
    candidates = select_targets(vit, MASMConfig(targets=("attn.proj", "mlp.fc2")))
    modules = dict(vit.named_modules())
    for name in NOISY:  # zero-mean noise 100x the gradient's own scale: these layers' gradients carry no signal
        gen = torch.Generator().manual_seed(hash(name) % 1000)
        modules[name].weight.register_hook(
            lambda g, gen=gen: g + 100 * g.abs().mean() * torch.randn(g.shape, generator=gen)
        )
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * 4)
    # Each batch: the same images with small perturbations, so the clean layers' gradients agree across batches.
    batches = [
        (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(i)), labels)
        for i in range(12)
    ]
    before = {n: p.detach().clone() for n, p in vit.named_parameters()}
    flags = {n: p.requires_grad for n, p in vit.named_parameters()}

    scores = gradient_gsnr(vit, candidates, batches, lambda b: F.cross_entropy(head(vit(b[0])), b[1]))

    assert list(scores) == candidates
    clean = [s for n, s in scores.items() if n not in NOISY]
    assert max(scores[n] for n in NOISY) < 0.01
    assert min(clean) > 1
    assert choose_layers(scores, "top", keep_ratio=0.5) == [n for n in candidates if n not in NOISY]
    for name, p in vit.named_parameters():
        assert torch.equal(p, before[name]) and p.requires_grad == flags[name] and p.grad is None, name


CHOOSE = {  # scores, rule, keep_ratio, threshold → chosen (model order)
    "top_half": ({"a": 0.1, "b": 3.0, "c": 2.0, "d": 0.2}, "top", 0.5, 0.0, ["b", "c"]),
    "top_rounds_up": ({"a": 0.1, "b": 3.0, "c": 2.0}, "top", 0.5, 0.0, ["b", "c"]),
    "threshold": ({"a": 0.1, "b": 3.0, "c": 0.06}, "threshold", 0.5, 0.05, ["a", "b", "c"]),
    "threshold_strict": ({"a": 0.01, "b": 3.0, "c": 0.04}, "threshold", 0.5, 0.05, ["b"]),
}


@pytest.mark.parametrize(("scores", "rule", "ratio", "threshold", "expected"), CHOOSE.values(), ids=CHOOSE.keys())
def test_choose_layers(scores, rule, ratio, threshold, expected):
    assert choose_layers(scores, rule, ratio, threshold) == expected


def test_a_threshold_no_layer_reaches_keeps_the_best_one_and_says_so():
    with pytest.warns(UserWarning, match="no layer reaches GSNR 0.5 .best: b with 0.2.; keeping only b"):
        assert choose_layers({"a": 0.1, "b": 0.2, "c": math.nan}, "threshold", threshold=0.5) == ["b"]


ERRORS = {
    "batches": ({"batches": 2}, r"LayerSelection.batches must be an int >= 4 .* got 2"),
    "rule": ({"rule": "best"}, r"LayerSelection.rule must be 'top' or 'threshold', got 'best'"),
    "keep_ratio": ({"keep_ratio": 0.0}, r"LayerSelection.keep_ratio must be in \(0, 1\], got 0.0"),
    "threshold": ({"threshold": -1.0}, r"LayerSelection.threshold must be >= 0, got -1.0"),
    "layers": ({"layers": []}, r"LayerSelection.layers must be null or a non-empty list"),
    "head": ({"head": "linear"}, r"LayerSelection.head must be 'fit' or 'random', got 'linear'"),
    "score": ({"score": "full"}, r"LayerSelection.score must be 'tail' or 'weight', got 'full'"),
    "head_l2": ({"head_l2": 0.0}, r"LayerSelection.head_l2 must be > 0, got 0.0"),
}


@pytest.mark.parametrize(("kwargs", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_bad_selection_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayerSelection(**kwargs)


def test_selection_without_adapters_is_refused():
    with pytest.raises(ValueError, match=r"model\.selection chooses where adapters go, but model\.adapters is null"):
        MASMDetector(adapters=None, selection=LayerSelection())


class Faces(Dataset):
    def __init__(self, n: int = 32) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=gen)
        self.labels = torch.arange(n) % 2
        self.images[self.labels == 1] += 0.5  # a learnable difference

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "video": torch.tensor(i), "index": torch.tensor(i)}


class FacesData(LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(Faces(), batch_size=4, shuffle=True)

    def val_dataloader(self) -> DataLoader:  # never run (limit_val_batches=0); defined so Lightning need not warn
        return DataLoader(Faces(4), batch_size=4)


def _fmsd(**selection: object) -> MASMDetector:
    kwargs = {k: v for k, v in TINY_VIT_KWARGS.items() if k != "num_classes"}
    return MASMDetector(
        backbone=TINY_VIT,
        backbone_kwargs=kwargs,
        adapters=MASMConfig(num_subspaces=2, subspace_rank=2, targets=("attn.qkv", "mlp.fc2")),
        selection=LayerSelection(batches=6, keep_ratio=0.5, **selection),
    )


def _trainer(tmp_path, **kwargs: object) -> Trainer:
    return Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        limit_val_batches=0,
        **kwargs,
    )


def _adapted(model: MASMDetector) -> list[str]:
    return [name for name, _ in iter_adapters(model.backbone)]


@pytest.mark.slow
def test_fit_selects_then_decomposes_only_the_chosen_layers_and_the_checkpoint_rebuilds_them(tmp_path):
    model = _fmsd()
    trainer = _trainer(tmp_path)
    with pytest.warns(UserWarning, match="starts from random weights"):
        trainer.fit(model, datamodule=FacesData())

    record = json.loads((tmp_path / "layer_selection.json").read_text())
    scores = record["scores"]
    assert list(scores) == ["blocks.0.attn.qkv", "blocks.0.mlp.fc2", "blocks.1.attn.qkv", "blocks.1.mlp.fc2"]
    chosen = sorted(scores, key=scores.__getitem__, reverse=True)[:2]
    assert sorted(record["layers"]) == sorted(chosen)
    assert _adapted(model) == record["layers"] == list(model.selection.layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith("head.") or any(f"backbone.{layer}." in n for layer in chosen) for n in trainable
    )
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}  # built over the chosen layers
    assert list(model.hparams["selection"]["layers"]) == record["layers"]

    path = tmp_path / "fmsd.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["masm"]["selection"] == {"layers": record["layers"], "scores": scores}
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.eval()(images)

    # load_from_checkpoint: the hyper-parameters carry the layers, so no selection runs (there is no trainer).
    with pytest.warns(UserWarning, match="starts from random weights"):
        reloaded = MASMDetector.load_from_checkpoint(path, weights_only=True).eval()
    assert _adapted(reloaded) == record["layers"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), expected)

    # `test --ckpt_path` builds the model from the config (no layers known, or no selection at all): the
    # checkpoint's layers win, and no selection phase runs outside fit.
    for fresh in (
        _fmsd(),
        MASMDetector(
            backbone=TINY_VIT,
            backbone_kwargs=_fmsd().backbone_kwargs,
            adapters=MASMConfig(num_subspaces=2, subspace_rank=2, targets=("attn.qkv", "mlp.fc2")),
        ),
    ):
        loader = DataLoader(Faces(8), batch_size=4)
        with pytest.warns(UserWarning, match="starts from random weights"):
            _trainer(tmp_path / "test").predict(fresh, loader, ckpt_path=path)
        assert _adapted(fresh) == record["layers"]
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(images), expected)
    assert not (tmp_path / "test" / "layer_selection.json").exists()


@pytest.mark.slow
def test_given_layers_skip_the_selection_and_the_phase_leaves_training_rng_untouched(tmp_path):
    given = _fmsd(layers=("blocks.1.mlp.fc2",))
    with pytest.warns(UserWarning, match="starts from random weights"):
        _trainer(tmp_path / "given").fit(given, datamodule=FacesData())
    assert _adapted(given) == ["blocks.1.mlp.fc2"]
    assert not (tmp_path / "given" / "layer_selection.json").exists()

    torch.manual_seed(7)
    selected = _fmsd()
    with pytest.warns(UserWarning, match="starts from random weights"):
        _trainer(tmp_path / "selected").fit(selected, datamodule=FacesData())
    after_selection = torch.rand(3)
    torch.manual_seed(7)
    reference = _fmsd(layers=selected.selection.layers)
    with pytest.warns(UserWarning, match="starts from random weights"):
        _trainer(tmp_path / "reference").fit(reference, datamodule=FacesData())
    torch.testing.assert_close(torch.rand(3), after_selection)  # the same draws, with or without the phase
    for (name, a), (_, b) in zip(selected.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_the_tail_score_reads_exactly_the_gradient_of_the_factors_injection_creates():
    torch.manual_seed(0)
    net = torch.nn.ModuleDict({"qkv": torch.nn.Linear(12, 9)})  # 9 rows: three stacked 3-row projections
    x, target = torch.randn(5, 12), torch.randn(5, 9)
    config = MASMConfig(num_subspaces=2, subspace_rank=1, targets=("qkv",))
    for parts in (1, 3):
        dense = copy.deepcopy(net)
        F.mse_loss(dense["qkv"](x), target).backward()
        transform = tail_gradient(dense["qkv"].weight, tail=2, parts=parts)
        mapped = transform(dense["qkv"].weight.grad)

        adapted = copy.deepcopy(net)
        inject_adapters(adapted, dataclasses.replace(config, split_fused=parts > 1))
        F.mse_loss(adapted["qkv"](x), target).backward()
        subspaces = [sub for _, adapter in iter_adapters(adapted) for sub in adapter.subspaces]
        expected = []
        for block in range(parts):  # per block: [G V_t, Gᵀ U_t, diag(U_tᵀ G V_t)], the factors' gradients ÷ s
            subs = subspaces[2 * block : 2 * block + 2]
            s = torch.cat([sub.s.detach() for sub in subs])
            expected += [
                (torch.cat([sub.U.grad for sub in subs], 1) / s).reshape(-1),
                (torch.cat([sub.V.grad for sub in subs], 1) / s).reshape(-1),
                torch.cat([sub.s.grad for sub in subs]),
            ]
        torch.testing.assert_close(mapped.abs(), torch.cat(expected).abs(), rtol=1e-4, atol=1e-6)


def test_a_fitted_head_does_not_depend_on_its_seed():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(64, 16, generator=gen)
    labels = (features[:, 0] + 0.5 * torch.randn(64, generator=gen) > 0).long()
    logits = []
    for seed in range(3):
        torch.manual_seed(seed)
        head = torch.nn.Linear(16, 2)
        fit_head(head, features, labels, l2=1e-3)
        with torch.no_grad():
            out = head(features)
        logits.append(out[:, 1] - out[:, 0])  # the softmax only sees the difference
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], rtol=1e-3, atol=1e-3)
    torch.manual_seed(1)
    assert (torch.nn.Linear(16, 2)(features).diff(dim=1).squeeze() - logits[0]).abs().max() > 1  # unlike random
