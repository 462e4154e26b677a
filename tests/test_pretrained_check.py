"""benchmarks/pretrained_check.py: every arm is built with its own constraint settings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("pretrained_check", ROOT / "benchmarks" / "pretrained_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrained_check"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["pretrained_check"]


@pytest.mark.parametrize("method", ["effort", "masm", "masm_plain"])
def test_each_arm_gets_its_own_cap_and_semantic_strength(check, method, monkeypatch):
    overlays, overrides = check.METHODS[method]
    config = check.composed("configs/backbones/mobilenetv2.yaml", overlays)
    expected = {**config["model"], **overrides}
    seen: dict = {}

    def record(**kwargs):
        seen.update(kwargs)
        return object()

    monkeypatch.setattr(check, "MASMDetector", record)
    check.build(config, ["conv_pw", "conv_pwl"], overrides, steps=40, image_size=96)
    for key in ("lambda_orth", "lambda_spec", "lambda_semantic", "spectral_cap"):
        assert seen[key] == expected[key], key
    if method in ("effort", "masm_plain"):  # as released / no constraint: no cap at all (the default is 2)
        assert seen["spectral_cap"] is None
