"""Training-step cost of MASM against full fine-tuning, Effort's composed residual and the frozen floor.

One process, one model per method, steps interleaved round-robin (this machine drifts: back-to-back blocks of one
method mislead). Each step is forward + backward, the optimizer step (every method: the recipe's optimizer,
``MASMAdam``, i.e. Adam with torch's fused kernel) and, for MASM, the decoupled constraint step
(``apply_constraints``) and the constraint metrics training logs (``constraint_metrics``), each timed separately
and summed. Prints the median step time, its ratio to full fine-tuning and to the floor, the phases, trainable
parameters, and memory: on CUDA the peak allocated bytes per step; on CPU the bytes autograd saves for backward
plus gradients and optimizer state (deterministic, unlike RSS). ``--compile`` adds each method compiled with
``torch.compile`` (``<name>+c``) to the same round-robin. Ends with ``step time: …`` (MASM's ratios).

    python benchmarks/step_time.py                      # CPU: ViT-B/16, depth 4, batch 8
    python benchmarks/step_time.py --methods masm masm_mask --steps 15   # the mask callback's overhead
    python benchmarks/step_time.py --methods masm masm_unconstrained --steps 15   # the constraint step's
    python benchmarks/step_time.py --depth 12 --steps 10
    python benchmarks/step_time.py --methods masm floor --compile   # compiled vs eager
    python benchmarks/step_time.py --device cuda        # + ViT-L/14, batch 32, bf16 autocast
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masm_lightning.adapters import MASMConfig, apply_constraints, constraint_metrics, inject_adapters
from masm_lightning.training.callbacks import SelectiveLayerMask
from masm_lightning.training.module import MASMAdam

TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class ComposedResidualLinear(nn.Module):
    """Effort's reference layer: ``W = W_main + U_r diag(S_r) V_r`` rebuilt densely on every forward."""

    def __init__(self, linear: nn.Linear, rank: int) -> None:
        super().__init__()
        u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
        keep = s.numel() - rank
        self.weight_main = nn.Parameter((u[:, :keep] * s[:keep]) @ vh[:keep], requires_grad=False)
        self.U_residual = nn.Parameter(u[:, keep:].clone())
        self.S_residual = nn.Parameter(s[keep:].clone())
        self.V_residual = nn.Parameter(vh[keep:].clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_main + self.U_residual @ torch.diag(self.S_residual) @ self.V_residual
        return F.linear(x, weight, self.bias)


class _NoDistributed:
    """Just enough of a Trainer for SelectiveLayerMask's per-step work outside Lightning."""

    class strategy:
        @staticmethod
        def broadcast(obj: object, src: int = 0) -> object:
            return obj


@dataclass
class Method:
    name: str
    model: nn.Module
    head: nn.Linear
    after_step: Callable[[nn.Module, torch.optim.Optimizer], None] | None = None  # MASM's constraint step
    mask: SelectiveLayerMask | None = None
    optimizer: torch.optim.Optimizer = field(init=False)
    times: list[float] = field(default_factory=list)
    phases: list[tuple[float, float, float]] = field(default_factory=list)  # (fwd+bwd, optimizer, constraints)
    memory: list[int] = field(default_factory=list)
    forward: Callable[[Tensor], Tensor] = field(init=False)

    def __post_init__(self) -> None:
        params = [p for p in (*self.model.parameters(), *self.head.parameters()) if p.requires_grad]
        self.optimizer = MASMAdam(params)  # what training uses (fused Adam), the same for every method
        self.forward = self.model

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in (*self.model.parameters(), *self.head.parameters()) if p.requires_grad)


def build(name: str, model_name: str, depth: int | None, rank: int, device: torch.device) -> Method:
    kwargs = {"num_classes": 0} | ({"depth": depth} if depth else {})
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, **kwargs).to(device)
    head = nn.Linear(model.num_features, 2).to(device)
    after = None
    if name == "full_ft":
        pass
    elif name == "floor":
        model.requires_grad_(False)
        model.pos_embed.requires_grad_(True)  # backward must still run through every block, but computes no weight grad
    elif name == "composed":
        model.requires_grad_(False)
        for module_name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and module_name.endswith(TARGETS):
                model.set_submodule(module_name, ComposedResidualLinear(module, rank))
    elif name in ("masm", "masm_mask", "masm_unconstrained"):
        inject_adapters(model, MASMConfig(num_subspaces=4, subspace_rank=rank // 4, targets=TARGETS))

        def after(m: nn.Module, optimizer: torch.optim.Optimizer) -> None:
            apply_constraints(m, optimizer)
            constraint_metrics(m)  # training_step logs these every step

        if name == "masm_unconstrained":  # the constraint step's cost: masm / masm_unconstrained
            after = None
    else:
        raise ValueError(f"unknown method {name!r}")
    # masm_mask: + the selective layer mask's per-step work (statistics of every subspace, the mask pass) with
    # nothing masked, so the optimizer does the same work as `masm`; decisions run every `interval` steps only.
    mask = None
    if name == "masm_mask":
        mask = SelectiveLayerMask(warmup_steps=10**9)  # finds the adapters on its first call (a warm-up step)
    return Method(name, model.train(), head, after, mask)


def step(
    method: Method,
    images: Tensor,
    labels: Tensor,
    autocast: torch.dtype | None,
    device: torch.device,
    count_saved: bool = False,
) -> None:
    """One timed training step; with ``count_saved`` (CPU, untimed) it records bytes instead of seconds."""
    saved_bytes = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal saved_bytes
        saved_bytes += t.numel() * t.element_size()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if count_saved else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start = now()
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None), hooks:
        loss = F.cross_entropy(method.head(method.forward(images)), labels)
    method.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if method.mask is not None:  # its per-step statistics count with the backward (they read the gradients)
        method.mask.on_before_optimizer_step(_NoDistributed, method.model, method.optimizer)
    backward = now()
    method.optimizer.step()
    stepped = now()
    if method.after_step is not None:
        method.after_step(method.model, method.optimizer)
    end = now()
    if device.type == "cuda":
        method.memory.append(torch.cuda.max_memory_allocated())
    elapsed = end - start
    if count_saved:
        grads = sum(p.numel() * p.element_size() for g in method.optimizer.param_groups for p in g["params"])
        state = sum(
            t.numel() * t.element_size()
            for s in method.optimizer.state.values()
            for t in s.values()
            if isinstance(t, Tensor)
        )
        method.memory.append(saved_bytes + grads + state)
    else:
        method.times.append(elapsed)
        method.phases.append((backward - start, stepped - backward, end - stepped))


def run(
    model_name: str,
    depth: int | None,
    batch: int,
    steps: int,
    warmup: int,
    rank: int,
    device: torch.device,
    autocast: torch.dtype | None,
    methods: list[str],
    compiled: bool = False,
) -> dict[str, float]:
    built = [build(name, model_name, depth, rank, device) for name in methods]
    if compiled:  # the same methods again, forward compiled (torch.compile traces the backward with it)
        for name in methods:
            method = build(name, model_name, depth, rank, device)
            method.name += "+c"
            method.forward = torch.compile(method.model)
            built.append(method)
    size = built[0].model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    for i in range(warmup + steps):
        for method in built:  # round-robin: every method sees the same machine state
            step(method, images, labels, autocast, device)
            if i < warmup:
                method.times.clear()
                method.phases.clear()
                method.memory.clear()
    if device.type == "cpu":  # memory accounting runs Python per saved tensor: one extra step, not timed
        for method in built:
            step(method, images, labels, autocast, device, count_saved=True)
    median = {m.name: statistics.median(m.times) for m in built}
    memory_kind = "peak CUDA MB" if device.type == "cuda" else "saved+grad+optim MB"
    print(
        f"\n{model_name} depth={depth or 'full'} batch={batch} device={device} "
        f"autocast={autocast} steps={steps} (median of interleaved steps; phases: medians, in seconds)"
    )
    print(
        f"{'method':<14}{'step s':>9}{'min s':>8}{'img/s':>8}{'vs full_ft':>11}{'vs floor':>10}{'fwd+bwd':>9}"
        f"{'optim':>8}{'constr':>8}{'trainable':>13}{memory_kind:>22}"
    )
    for m in built:
        suffix = "+c" if m.name.endswith("+c") else ""
        full = median.get("full_ft" + suffix, float("nan"))
        floor = median.get("floor" + suffix, float("nan"))
        phases = [statistics.median(p) for p in zip(*m.phases)]
        print(
            f"{m.name:<14}{median[m.name]:>9.3f}{min(m.times):>8.3f}{batch / median[m.name]:>8.1f}"
            f"{median[m.name] / full:>11.3f}{median[m.name] / floor:>10.3f}"
            + "".join(f"{p:>9.3f}" if i == 0 else f"{p:>8.3f}" for i, p in enumerate(phases))
            + f"{m.trainable:>13,}{(max(m.memory) if m.memory else 0) / 2**20:>22.1f}"
        )
    if "masm" in median and "masm_unconstrained" in median:
        print(f"constraint step overhead on the MASM step: {median['masm'] / median['masm_unconstrained']:.3f}x")
    if "masm" in median and "masm_mask" in median:
        print(f"selective layer mask overhead on the MASM step: {median['masm_mask'] / median['masm']:.3f}x")
    if compiled:
        for name in methods:
            print(f"compiled vs eager, {name}: {median[name] / median[name + '+c']:.3f}x faster")
    ratios = {}
    if "masm" in median and "floor" in median:
        ratios["masm_vs_floor"] = median["masm"] / median["floor"]
    if "masm" in median and "full_ft" in median:
        ratios["masm_vs_fullft"] = median["masm"] / median["full_ft"]
    if compiled and "masm" in median:
        ratios["masm_compile_speedup"] = median["masm"] / median["masm+c"]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="vit_base_patch16_clip_quickgelu_224")
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks (default: 4 on CPU, all on GPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16, help="trainable rank per matrix (MASM: K=4 x d=rank/4)")
    parser.add_argument("--methods", nargs="+", default=["full_ft", "composed", "masm", "masm_mask", "floor"])
    parser.add_argument("--compile", action="store_true", help="also each method compiled with torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    depth = args.depth if args.depth is not None else (4 if device.type == "cpu" else None)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    ratios = run(
        args.model, depth, args.batch, args.steps, args.warmup, args.rank, device, None, args.methods, args.compile
    )
    if device.type == "cuda":
        ratios = run(
            "vit_large_patch14_clip_quickgelu_224",
            None,
            32,
            args.steps,
            args.warmup,
            args.rank,
            device,
            torch.bfloat16,
            args.methods,
            args.compile,
        )
    print("step time: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
