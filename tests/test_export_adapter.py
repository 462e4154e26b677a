"""``export --adapter``: a small file of trained factors that rebuilds the same detector on the same base, a model
card, a refusal for another base; and the hub path up to the client's boundary (never the network)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml
from torch import nn

from masm_lightning.adapters import MASMConfig, inject_adapters
from masm_lightning.cli import main
from masm_lightning.data.settings import ExtractionSettings
from masm_lightning.sharing.checkpoint import CheckpointError, load_checkpoint
from masm_lightning.sharing.export import export_adapter
from masm_lightning.sharing.formats import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, load_adapter
from masm_lightning.sharing.model_card import license_for, parse_results
from masm_lightning.training.module import MASMDetector


def _images(size: int) -> torch.Tensor:
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_adapter_folder_rebuilds_the_checkpoint_scores_and_carries_a_model_card(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "adapter"
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--adapter", "true"])
    assert ADAPTER_WEIGHTS_NAME in capsys.readouterr().out
    config = json.loads((out / ADAPTER_CONFIG_NAME).read_text())
    detector, _ = load_checkpoint(tiny_checkpoint)
    assert config["base_model"]["name"] == detector.backbone_name
    assert config["base_model"]["fingerprint"] == detector.fingerprint
    assert config["threshold"] == detector.hparams["threshold"] and config["face_crop"]["size"] > 0
    assert config["input"]["image_size"] == detector.data_config["image_size"]
    loaded, _ = load_adapter(out)
    images = _images(config["input"]["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), detector(images))
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "masm_lightning" and front["license"] == "apache-2.0"  # the generated demo data
    assert "deepfake-detection" in front["tags"] and front["datasets"] == ["masm_lightning-generated-demo"]
    for section in ("## What it detects", "## How it was trained", "## How to load", "## Limitations"):
        assert section in card


def test_bf16_adapter_loads_back_to_float32_close_to_the_checkpoint(tmp_path, tiny_checkpoint):
    out = tmp_path / "adapter16"
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--adapter", "true", "--dtype", "bf16"])
    detector, _ = load_checkpoint(tiny_checkpoint)
    loaded, config = load_adapter(out)
    assert config["dtype"] == "bfloat16" and all(p.dtype == torch.float32 for p in loaded.parameters())
    images = _images(config["input"]["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).softmax(-1), detector(images).softmax(-1), atol=2e-2, rtol=0)


def test_a_base_with_another_fingerprint_is_refused_naming_both(tmp_path, tiny_checkpoint):
    out = tmp_path / "adapter"
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--adapter", "true"])
    config = json.loads((out / ADAPTER_CONFIG_NAME).read_text())
    config["hparams"]["backbone_seed"] += 1  # another random base: same shapes, other weights
    config["base_model"]["backbone_seed"] += 1  # (its copy for readers agrees)
    (out / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        load_adapter(out)
    message = str(error.value)
    assert config["base_model"]["fingerprint"] in message and "fingerprint" in message
    assert f"random init, seed {config['hparams']['backbone_seed']}" in message  # the seed it was built with
    other = MASMDetector(**config["hparams"])
    other.configure_model()
    assert other.fingerprint in message


def test_vit_l14_masm_adapter_is_under_30_mb_in_float32_and_15_mb_in_bf16(tmp_path):
    # ViT-L/14 shapes at no cost: the backbone and the SVDs on the meta device, then only the trainable factors and
    # the head materialised (they are all an adapter file holds).
    name = "vit_large_patch14_clip_quickgelu_224"
    model = MASMDetector(name, pretrained=False, adapters=MASMConfig(num_subspaces=4, subspace_rank=4))
    with torch.device("meta"):
        backbone = timm.create_model(name, pretrained=False, num_classes=0)
        inject_adapters(backbone, model.adapter_config)
    trainable = [m for m in backbone.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    for module in trainable:
        module.to_empty(device="cpu", recurse=False)
    for p in backbone.parameters():
        if p.requires_grad:
            nn.init.normal_(p)
    model.backbone, model.head, model.fingerprint = backbone, nn.Linear(1024, 2), "0" * 16
    sizes = {}
    for dtype in ("float32", "bf16"):
        out = export_adapter(model, tmp_path / dtype, ExtractionSettings(), dtype=dtype)
        sizes[dtype] = (out / ADAPTER_WEIGHTS_NAME).stat().st_size / 2**20
    assert 20 < sizes["float32"] <= 30, sizes  # 7.08 M factors + head: 27 MiB
    assert sizes["bf16"] <= 15 and sizes["bf16"] == pytest.approx(sizes["float32"] / 2, rel=0.01), sizes


def test_the_licence_follows_the_training_data():
    assert license_for(["ffpp"]) == "cc-by-nc-4.0" and license_for(["celebdf", "x"]) == "cc-by-nc-4.0"
    assert license_for(["masm_lightning-generated-demo"]) == "apache-2.0"
    assert license_for(["my_own_videos"]) == "other" and license_for([]) == "other"


def test_results_md_metrics_are_parsed_per_test_set():
    from masm_lightning.evaluation.results import results_markdown

    values = {f"{lv}_{k}": 0.5 for lv in ("frame", "video") for k in ("auc", "ap", "eer", "acc")}
    values |= {"video_auc": 0.9375, "num_frames": 10, "num_videos": 2, "frame_ap": float("nan")}
    parsed = parse_results(results_markdown({"celebdf": values}, 0.5))
    assert parsed["celebdf"]["video_auc"] == 0.9375 and "frame_ap" not in parsed["celebdf"]
    assert parsed["celebdf"]["frame_eer"] == 0.5


CONTRADICTIONS = {  # an edit of adapter_config.json: (section, key, value), the field the refusal names
    "base_seed": (("base_model", "backbone_seed", 1), "base_model.backbone_seed = 1, but hparams.backbone_seed = 0"),
    "hparams_seed": (("hparams", "backbone_seed", 1), "base_model.backbone_seed = 0, but hparams.backbone_seed = 1"),
    "base_kwargs": (("base_model", "kwargs", {}), "base_model.kwargs.depth = null, but hparams.backbone_kwargs.depth"),
    "subspaces": (("adapters", "num_subspaces", "banana"), 'adapters.num_subspaces = "banana", but hparams.adapters'),
    "threshold": (("", "threshold", 0.7), "threshold = 0.7, but hparams.threshold = 0.5"),
}


@pytest.mark.parametrize(("edit", "message"), CONTRADICTIONS.values(), ids=CONTRADICTIONS.keys())
def test_an_edit_that_contradicts_hparams_is_refused_naming_the_field_and_both_values(
    tmp_path, tiny_checkpoint, edit, message
):
    out = tmp_path / "adapter"
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--adapter", "true"])
    config = json.loads((out / ADAPTER_CONFIG_NAME).read_text())
    section, key, value = edit
    (config[section] if section else config)[key] = value
    (out / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="the model is built from hparams") as error:
        load_adapter(out)
    assert message in str(error.value)


def test_a_threshold_of_the_wrong_type_is_one_line_through_detect(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "adapter"
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--adapter", "true"])
    config = json.loads((out / ADAPTER_CONFIG_NAME).read_text())
    config["hparams"]["threshold"] = "high"
    (out / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--ckpt", str(out), str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "hparams.threshold is 'high', but it takes a number" in err
