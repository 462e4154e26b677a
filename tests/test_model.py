"""MASMDetector checkpoints: only what training changed, the base identified, strict where it matters."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from masm_lightning import MASMConfig
from masm_lightning.training.module import MASMDetector

TINY = dict(
    backbone="vit_base_patch16_clip_quickgelu_224",
    pretrained=False,
    backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8),
)


def _detector(**overrides) -> MASMDetector:
    model = MASMDetector(**{**TINY, "adapters": MASMConfig(num_subspaces=2, subspace_rank=2), **overrides})
    model.configure_model()
    return model.eval()


def _train_a_little(model: MASMDetector) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 32, 32)).logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _save(model: MASMDetector, path) -> None:
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_checkpoint_holds_only_trained_tensors_and_reloads_to_identical_predictions(tmp_path, images):
    model = _detector()
    _train_a_little(model)
    path = tmp_path / "m.ckpt"
    _save(model, path)
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["state_dict"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= saved.keys()
    assert not any("semantic_weight" in k or "patch_embed" in k or "norm" in k for k in saved)
    saved_numel = sum(v.numel() for v in saved.values())
    total_numel = sum(p.numel() for p in model.parameters())
    assert saved_numel < 0.5 * total_numel
    assert checkpoint["masm"]["fingerprint"] == model.fingerprint

    reloaded = MASMDetector.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), model(images))


def test_a_different_base_is_refused_by_fingerprint(tmp_path):
    model = _detector()
    path = tmp_path / "m.ckpt"
    _save(model, path)
    with pytest.raises(
        ValueError,
        match=r"weight fingerprint [0-9a-f]{16}, but this model's .* has [0-9a-f]{16}: "
        r"load the same base weights as in training",
    ):
        MASMDetector.load_from_checkpoint(path, backbone_seed=1)


def test_prefixed_keys_load(images):
    model = _detector()
    _train_a_little(model)
    for prefix in ("module.", "model.", "module.model."):
        fresh = _detector()
        fresh.load_state_dict({prefix + k: v for k, v in model.state_dict().items()}, strict=True)
        with torch.no_grad():
            torch.testing.assert_close(fresh(images), model(images))


def test_strict_load_reports_missing_trained_and_unexpected_keys():
    model = _detector()
    state = model.state_dict()
    del state["head.weight"]
    state["backbone.not_a_layer.U"] = torch.zeros(1)
    with pytest.raises(
        RuntimeError,
        match=r"missing 1 trained keys \['head.weight'\], unexpected 1 keys "
        r"\['backbone.not_a_layer.U'\]",
    ):
        _detector().load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    ("overrides", "trainable_backbone"),
    [({}, "adapters"), ({"adapters": None}, "none"), ({"adapters": None, "freeze_backbone": False}, "all")],
    ids=["masm", "linear_probe", "full_ft"],
)
def test_baselines_train_what_they_say(overrides, trainable_backbone):
    model = _detector(**overrides)
    backbone = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert all(p.requires_grad for p in model.head.parameters())
    if trainable_backbone == "none":
        assert backbone == []
    elif trainable_backbone == "all":
        assert len(backbone) == len(list(model.backbone.parameters()))
    else:
        assert backbone and all(n.rsplit(".", 1)[-1] in ("U", "s", "V") for n in backbone)


def test_non_finite_loss_stops_with_the_step_and_terms():
    model = _detector()
    batch = {"image": torch.full((2, 3, 32, 32), float("nan")), "label": torch.tensor([0, 1])}
    model.trainer = Trainer(logger=False, enable_checkpointing=False)  # gives global_step and logging a home
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at global step 0 .*ce=nan"):
        model.training_step(batch, 0)


def test_configure_model_is_idempotent():
    model = _detector()
    backbone = model.backbone
    model.configure_model()
    assert model.backbone is backbone


def _to_openai_visual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm CLIP ViT keys → OpenAI/open_clip ``visual.*`` keys (the inverse of timm's converter)."""
    swaps = [
        ("patch_embed.proj", "conv1"),
        ("blocks.", "transformer.resblocks."),
        ("norm_pre", "ln_pre"),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ]
    out = {}
    for key, value in state.items():
        if key.startswith("norm."):
            key = key.replace("norm.", "ln_post.")
        for old, new in swaps:
            key = key.replace(old, new)
        if key == "cls_token":
            key, value = "class_embedding", value.reshape(-1)
        elif key == "pos_embed":
            key, value = "positional_embedding", value[0]
        out["visual." + key] = value
    width = state["cls_token"].shape[-1]
    out["visual.proj"] = torch.randn(width, 16)  # OpenAI's image projection: must be dropped, not loaded
    out["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3, 3)  # the text tower: ignored
    return out


@pytest.mark.parametrize("layout", ["timm", "openai"])
def test_checkpoint_path_loads_local_backbone_weights(tmp_path, images, layout):
    import timm

    from masm_lightning.training.module import weights_fingerprint

    torch.manual_seed(7)
    source = timm.create_model(TINY["backbone"], pretrained=False, num_classes=0, **TINY["backbone_kwargs"]).eval()
    state = source.state_dict()
    path = tmp_path / f"weights_{layout}.pth"
    torch.save(state if layout == "timm" else _to_openai_visual(state), path)

    model = _detector(checkpoint_path=str(path))
    assert model.fingerprint == weights_fingerprint(source)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(images), source(images), rtol=1e-4, atol=1e-5)


def test_random_backbone_warns_unless_asked_for_and_a_missing_file_is_named(recwarn):
    with pytest.warns(UserWarning, match="starts from random weights"):
        _detector(pretrained=None)
    recwarn.clear()
    _detector(pretrained=False)  # said on purpose (tests, the demo): no warning
    assert not [w for w in recwarn if "random weights" in str(w.message)]
    with pytest.raises(FileNotFoundError, match=r"model.checkpoint_path '/nope/ViT-L-14.pt' is not a file"):
        _detector(checkpoint_path="/nope/ViT-L-14.pt")


def test_data_module_follows_the_backbone_and_refuses_a_disagreement(tmp_path):
    from masm_lightning.data import DemoDataModule

    model = MASMDetector(**TINY)
    data = DemoDataModule(
        root=str(tmp_path), num_workers=0, input_config={"image_size": 64, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    )
    trainer = Trainer(logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    data.trainer = trainer
    with pytest.raises(ValueError, match=r"data.input_config .* disagrees with the model's data_config"):
        data.resolved_input_config()
    data.hparams.input_config = None
    assert data.resolved_input_config() == {**model.data_config}


def test_constraint_step_runs_once_per_optimizer_step_and_stays_out_of_the_loss(tmp_path, monkeypatch):
    """With accumulate_grad_batches=2, 4 batches are 2 optimizer steps: 2 constraint steps, each after the
    optimizer's; the loss (hence p.grad, which the layer mask reads) is the task's alone."""
    import masm_lightning.training.module as model_module
    from masm_lightning.data import DemoDataModule

    calls = []
    real = model_module.apply_constraints

    def spy(adapters, optimizer, constraints):
        calls.append(sum(s["step"] for s in optimizer.optimizer.state.values()) / len(optimizer.optimizer.state))
        real(adapters, optimizer, constraints)

    monkeypatch.setattr(model_module, "apply_constraints", spy)
    model = MASMDetector(**TINY, adapters=MASMConfig(num_subspaces=2, subspace_rank=2))
    data = DemoDataModule(
        root=str(tmp_path / "data"),
        videos={"train": 8, "val": 2, "test": 2},
        frames_per_video=2,
        size=32,
        batch_size=4,
        num_workers=0,
        augmentation="light",
    )
    trainer = Trainer(
        max_steps=2,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    assert calls == [1.0, 2.0]  # once per step, after the optimizer's update of that step
    metrics = trainer.callback_metrics
    assert metrics["train/loss"] == metrics["train/ce"]
    assert {"train/orth", "train/spec"} <= metrics.keys()


def test_num_trainable_parameters_counts_the_factors_and_the_head():
    model = _detector()  # K=2, d=2 on qkv (3 blocks of 32×32), proj (32×32), fc1 (128×32), fc2 (32×128); depth 2
    per_block = 4 * (3 * (32 + 32 + 1) + (32 + 32 + 1) + (128 + 32 + 1) + (32 + 128 + 1))
    assert model.num_trainable_parameters() == 2 * per_block + 32 * 2 + 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("adapters", "expected"),
    [
        (MASMConfig(), 7_080_192),  # configs/ffpp.yaml
        (MASMConfig.effort(), 196_704),  # configs/effort.yaml
        (MASMConfig(num_subspaces=2, subspace_rank=1, targets=("attn.qkv", "attn.proj")), 393_408),  # masm_budget.yaml
    ],
    ids=["ffpp", "effort", "masm_budget"],
)
def test_vit_l14_adapter_budgets_quoted_in_the_configs(adapters, expected):
    """Counted on a meta-device ViT-L/14: shapes only, no weights, no SVD work."""
    import timm

    from masm_lightning.adapters import inject_adapters

    with torch.device("meta"):
        backbone = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False, num_classes=0)
    inject_adapters(backbone, adapters)
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == expected


def test_image_size_sets_the_input_side_the_data_module_resizes_to():
    from masm_lightning.training.module import MASMDetector

    cnn = MASMDetector(backbone="mobilenetv2_100", pretrained=False, image_size=96)
    assert cnn.data_config["image_size"] == 96
    assert MASMDetector(backbone="mobilenetv2_100", pretrained=False).data_config["image_size"] == 224
    with pytest.raises(ValueError, match=r"image_size 96 disagrees with model\.backbone_kwargs\.img_size 64"):
        MASMDetector(pretrained=False, backbone_kwargs={"img_size": 64}, image_size=96)
    with pytest.raises(ValueError, match="image_size must be a positive"):
        MASMDetector(backbone="mobilenetv2_100", pretrained=False, image_size=0)
