"""The speed switches change nothing users rely on: fused Adam is chosen where torch has it, and the adapter forward
compiles as one graph (``model.compile``, ``detect --compile``) with the same outputs and checkpoint keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from masm_lightning.adapters import MASMConfig, MASMLinear, inject_adapters
from masm_lightning.performance import compile_module, fast_adam_options
from masm_lightning.training.module import MASMAdam, MASMDetector

from .helpers import ROOT, TINY_VIT, TINY_VIT_KWARGS


def test_fast_adam_options_fused_on_cpu_float_and_foreach_otherwise() -> None:
    params = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2))]
    assert fast_adam_options(params) == {"fused": True}
    assert fast_adam_options([{"params": params}]) == {"fused": True}
    assert fast_adam_options([nn.Parameter(torch.randn(3, device="meta"))]) == {"foreach": True}
    assert fast_adam_options([]) == {}
    optimizer = MASMAdam(p for p in params)  # a generator is read once, the optimizer still gets every tensor
    assert optimizer.defaults["fused"] and len(optimizer.param_groups[0]["params"]) == 2


def test_fused_adam_matches_the_default_update() -> None:
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(8, 4))
    b.data.copy_(a.data)
    opt_a, opt_b = torch.optim.Adam([a], lr=2e-4, foreach=False), MASMAdam([b])
    for _ in range(3):
        grad = torch.randn(8, 4)
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_adapter_forward_compiles_without_graph_break() -> None:
    torch.manual_seed(0)
    adapter = MASMLinear(nn.Linear(24, 36), ranks=(2, 2), num_blocks=3)
    x = torch.randn(2, 5, 24, requires_grad=True)
    eager = adapter(x)
    compiled = torch.compile(adapter, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    torch.testing.assert_close(compiled(x), eager)
    explanation = torch._dynamo.explain(adapter)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_detector_keeps_its_keys_and_outputs() -> None:
    kwargs = dict(
        backbone=TINY_VIT,
        backbone_kwargs={k: v for k, v in TINY_VIT_KWARGS.items() if k != "num_classes"},
        pretrained=False,
        adapters=MASMConfig(num_subspaces=2, subspace_rank=2),
    )
    plain, compiled = MASMDetector(**kwargs), MASMDetector(**kwargs, compile=True)
    plain.configure_model()
    compiled.configure_model()
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # in place: no `_orig_mod.` prefix
    compiled.head.load_state_dict(plain.head.state_dict())  # the head is not seeded; the backbone is
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), plain(images), rtol=1e-4, atol=1e-5)


def test_compile_module_disabled_returns_the_module_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    inject_adapters(model, MASMConfig(num_subspaces=1, subspace_rank=1, targets=("0",)))
    assert compile_module(model, enabled=False) is model and model._compiled_call_impl is None


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")
def test_gpu_suite_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr
    assert "gpu suite: no CUDA device" in done.stdout
    assert not out.exists()  # nothing measured, nothing written
