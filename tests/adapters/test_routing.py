"""Subspace routing: a sample trains only the subspaces it is routed to; the forward values never change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from masm_lightning.adapters import MASMConfig, inject_adapters, iter_adapters, route_subspaces


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Linear(12, 10))
    conv = nn.Sequential(nn.Conv2d(12, 10, 1, stride=2))
    fused = nn.Sequential()
    fused.add_module("qkv", nn.Linear(12, 24))
    return {
        "linear": (linear, torch.randn(3, 5, 12)),
        "conv": (conv, torch.randn(3, 12, 6, 6)),
        "fused_qkv": (fused, torch.randn(3, 5, 12)),
    }


def _adapted(name: str) -> tuple[nn.Module, torch.Tensor]:
    model, x = _models()[name]
    target = "qkv" if name == "fused_qkv" else "0"
    inject_adapters(model, MASMConfig(num_subspaces=2, subspace_rank=2, semantic_rank=4, targets=(target,)))
    return model, x


def _grads(
    model: nn.Module, x: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with route_subspaces(model, mask):
        out = model(x)
    (out * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["linear", "conv", "fused_qkv"])
def test_routing_keeps_the_forward_and_cuts_the_gradients_of_unrouted_samples(name: str) -> None:
    model, x = _adapted(name)
    with torch.no_grad():
        plain = model(x)
        with route_subspaces(model, torch.tensor([[True, False], [False, True], [True, True]])):
            routed = model(x)
    torch.testing.assert_close(routed, plain, rtol=1e-5, atol=1e-6)

    torch.manual_seed(1)
    weights = torch.randn_like(plain)
    # Sample 0 may train subspace 0 only, samples 1 and 2 nothing: every factor gradient is sample 0's alone,
    # and subspace 1 (of every fused block) gets none.
    mask = torch.tensor([[True, False], [False, False], [False, False]])
    got = _grads(model, x, weights, mask)
    alone = _grads(model, x[:1], weights[:1], None)
    for param_name, grad in got.items():
        subspace = int(param_name.split("subspaces.")[1].split(".")[0])
        if subspace % 2 == 1:
            assert not grad.abs().max(), f"{param_name} got a gradient from samples not routed to it"
        else:
            torch.testing.assert_close(grad, alone[param_name], rtol=1e-4, atol=1e-6)
    # Without a mask every sample trains every subspace, as before.
    full = _grads(model, x, weights, None)
    assert all(full[n].abs().max() > 0 for n in full)


def test_masks_are_cleared_after_the_block_even_on_error() -> None:
    model, _ = _adapted("linear")
    with pytest.raises(RuntimeError, match="boom"), route_subspaces(model, torch.ones(3, 2, dtype=torch.bool)):
        raise RuntimeError("boom")
    assert all(adapter.route_mask is None for _, adapter in iter_adapters(model))


def test_a_mask_of_the_wrong_shape_is_refused_naming_the_expected_one() -> None:
    model, x = _adapted("linear")
    with (
        pytest.raises(ValueError, match=r"has 2 subspaces: expected \(batch, 2\)"),
        route_subspaces(model, torch.ones(3, 4, dtype=torch.bool)),
    ):
        pass
    with route_subspaces(model, torch.ones(2, 2, dtype=torch.bool)), pytest.raises(ValueError, match="2 samples"):
        model(x)


def test_a_window_partitioned_batch_repeats_each_samples_routing() -> None:
    model, x = _adapted("linear")
    windows = x.repeat_interleave(2, dim=0)  # 3 samples, 2 windows each, sample-major
    weights = torch.randn(6, 5, 10)
    got = _grads(model, windows, weights, torch.tensor([[True, False], [False, False], [False, False]]))
    alone = _grads(model, windows[:2], weights[:2], None)
    torch.testing.assert_close(got["0.subspaces.0.U"], alone["0.subspaces.0.U"], rtol=1e-4, atol=1e-6)
