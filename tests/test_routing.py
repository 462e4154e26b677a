"""Forgery types through training: routed updates make the K subspaces distinct; inference and merging unchanged."""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from masm_lightning import MASMConfig
from masm_lightning.adapters import iter_adapters, merge_adapters
from masm_lightning.data.forgery_types import (
    FORGERY_TYPES,
    forgery_type_id,
    routing_mask,
    shared_subspaces,
    subspace_assignment,
)
from masm_lightning.evaluation.subspaces import injected_subspace, subspace_contributions
from masm_lightning.training.module import MASMDetector

TINY = dict(
    backbone="vit_base_patch16_clip_quickgelu_224",
    pretrained=False,
    backbone_kwargs=dict(depth=1, embed_dim=32, num_heads=2, img_size=32, patch_size=8),
)
TYPES = [FORGERY_TYPES.index(name) for name in ("demo_blend", "demo_upsample", "demo_colour")]


def _batches(count: int = 8, size: int = 8, types: list[int] = TYPES) -> list[dict[str, torch.Tensor]]:
    """Reals and fakes of ``types``, each fake type with its own additive pattern, so every type has a signal."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(len(TYPES), 3, 32, 32, generator=g)
    out = []
    for i in range(count):
        label = torch.tensor([0, 1] * (size // 2))
        kind = torch.tensor([types[(i + j) % len(types)] for j in range(size)])
        kind[label == 0] = 0
        image = torch.randn(size, 3, 32, 32, generator=g)
        for j in range(size):
            if label[j]:
                image[j] += patterns[types.index(int(kind[j])) % len(patterns)]
        out.append(
            {
                "image": image,
                "label": label,
                "forgery_type": kind,
                "video": torch.arange(size),
                "index": torch.arange(size),
            }
        )
    return out


def _train(num_subspaces: int, rank: int, routing: str, steps: int = 8, types: tuple[str, ...] = ()) -> MASMDetector:
    """Train on :func:`_batches`; ``types`` (names): the fake types the training split holds, as fit records them."""
    seed_everything(0, verbose=False)
    model = MASMDetector(
        **TINY,
        adapters=MASMConfig(num_subspaces=num_subspaces, subspace_rank=rank, routing=routing),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    if types:
        model.routed_types = list(types)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*(log_every_n_steps|val_dataloader).*")
        ids = [FORGERY_TYPES.index(name) for name in types] or TYPES
        trainer.fit(model, DataLoader(_batches(types=ids), batch_size=None))
    return model.eval()


def _merged(model: MASMDetector) -> dict[str, torch.Tensor]:
    return {name: adapter.merged_weight() for name, adapter in iter_adapters(model.backbone)}


def _max_difference(a: MASMDetector, b: MASMDetector) -> float:
    left, right = _merged(a), _merged(b)
    return max(float((left[n] - right[n]).abs().max() / left[n].abs().max()) for n in left)


def test_vocabulary_maps_manifest_methods_and_routes_fakes_round_robin():
    assert FORGERY_TYPES[:2] == ("real", "unknown")
    assert forgery_type_id("Deepfakes", 1) == FORGERY_TYPES.index("Deepfakes")
    assert forgery_type_id("Deepfakes", 0) == 0  # a real is real whatever its method column says
    assert forgery_type_id("self_blend", 1) == FORGERY_TYPES.index("sbi")
    assert forgery_type_id("FF-F2F", 1) == FORGERY_TYPES.index("Face2Face")  # DeepfakeBench's label name
    assert forgery_type_id("fake", 1, "celebdf_v2") == FORGERY_TYPES.index("celebdf")
    assert forgery_type_id("fake", 1, "mine") == 1  # unknown
    ffpp = [FORGERY_TYPES.index(m) for m in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")]
    everything = subspace_assignment(4)
    assert everything[:2] == (-1, -1) and [everything[t] for t in ffpp] == [0, 1, 2, 3]
    # Round-robin over the types training holds: three types far apart in the vocabulary get three subspaces.
    trained = subspace_assignment(4, ["dfdc", "sbi", "stylegan"])
    assert [trained[FORGERY_TYPES.index(n)] for n in ("dfdc", "sbi", "stylegan")] == [0, 1, 2]
    mask = routing_mask(torch.tensor([0, 1, ffpp[2]]), torch.tensor(everything), 4)
    assert mask.tolist() == [[True] * 4, [True] * 4, [False, False, True, False]]


def test_a_subspace_no_trained_type_owns_is_trained_by_every_sample_not_by_reals_alone():
    # Self-blending alone: one fake type, K = 4. Subspace 0 is sbi's; 1-3 are owned by no trained type, so every
    # sample trains them (reals alone would teach them only a shift towards "real" that no fake opposes).
    assert shared_subspaces(4, ["sbi"]) == (False, True, True, True)
    assert shared_subspaces(4, ["sbi", "Deepfakes"]) == (False, False, True, True)
    assert shared_subspaces(4) == (False,) * 4  # every type: all four owned
    sbi, real = FORGERY_TYPES.index("sbi"), 0
    assignment = torch.tensor(subspace_assignment(4, ["sbi"]))
    mask = routing_mask(torch.tensor([real, sbi]), assignment, 4, torch.tensor(shared_subspaces(4, ["sbi"])))
    assert mask.tolist() == [[True] * 4, [True] * 4]  # one type: nothing to route, every sample trains every one
    two = ["sbi", "Deepfakes"]
    assignment = torch.tensor(subspace_assignment(4, two))
    mask = routing_mask(torch.tensor([sbi]), assignment, 4, torch.tensor(shared_subspaces(4, two)))
    assert mask.tolist() == [[False, True, True, True]]  # its own (1: Deepfakes comes first) and the shared two


def test_with_one_fake_type_routing_trains_the_same_model_as_no_routing():
    # The bias the shared subspaces remove: with one trained fake type, "type" routing must not differ from
    # "none" (before, three of four subspaces learned from reals alone and the model learned a constant).
    assert _max_difference(_train(4, 2, "type", types=("sbi",)), _train(4, 2, "none", types=("sbi",))) < 1e-5


def test_k_subspaces_train_differently_from_one_subspace_of_the_same_total_rank_only_when_routed():
    # Routing off: K=4 subspaces of rank 2 are one subspace of rank 8 in disguise (the same trained weights).
    assert _max_difference(_train(4, 2, "none"), _train(1, 8, "none")) < 1e-4
    # Routed by forgery type, the subspaces are trained by different samples: a different model.
    routed, single = _train(4, 2, "type"), _train(1, 8, "type")
    assert _max_difference(routed, single) > 1e-2
    # …and merging the routed model is exact: inference never needed a type.
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = routed(images)
        # Measuring what each subspace contributes resets one at a time and restores it bit for bit.
        contributions = subspace_contributions(routed, images)
        assert contributions.shape == (4, 4) and contributions.abs().max() > 0
        assert torch.equal(routed(images), before)
        with injected_subspace(routed, 0):
            assert not torch.equal(routed(images), before)
        merge_adapters(routed.backbone)
        torch.testing.assert_close(routed(images), before, rtol=1e-4, atol=1e-5)
    assert not list(iter_adapters(routed.backbone))


def test_checkpoint_stores_the_vocabulary_and_an_old_one_loads(tmp_path):
    model = MASMDetector(**TINY, adapters=MASMConfig(num_subspaces=2, subspace_rank=2))
    model.configure_model()
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["masm"]["forgery_types"] == list(FORGERY_TYPES)
    checkpoint["masm"]["forgery_types"] = ["real", "unknown", "theirs"]
    torch.save(checkpoint, path)
    assert MASMDetector.load_from_checkpoint(path, weights_only=True).forgery_types == ("real", "unknown", "theirs")
    del checkpoint["masm"]["forgery_types"]  # written before the vocabulary existed
    torch.save(checkpoint, path)
    assert MASMDetector.load_from_checkpoint(path, weights_only=True).forgery_types == FORGERY_TYPES
