"""Inference throughput of an exported (adapters merged) MASM model against a plain timm model of the same
architecture, and of the unmerged adapter model for reference.

One process; the models' forward passes are interleaved round-robin (this machine drifts: back-to-back blocks of
one model mislead). The exported model goes the user's way: a MASMDetector with trained-looking adapters →
``export_model`` → ``timm.create_model`` + ``load_state_dict(strict=True)`` from the safetensors file.

    python benchmarks/export_speed.py                      # CPU: ViT-B/16, depth 4, batch 8, 224 px
    python benchmarks/export_speed.py --depth 12 --threads 1
    python benchmarks/export_speed.py --device cuda --batch 64 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from torch import nn

from masm_lightning.adapters import MASMConfig, iter_adapters
from masm_lightning.data.settings import ExtractionSettings
from masm_lightning.sharing.export import export_model
from masm_lightning.sharing.formats import load_exported
from masm_lightning.training.module import MASMDetector


def build(args: argparse.Namespace) -> dict[str, nn.Module]:
    kwargs = {"depth": args.depth}
    warnings.filterwarnings("ignore", message=".*starts from random weights.*")
    adapted = MASMDetector(backbone=args.model, backbone_kwargs=kwargs, adapters=MASMConfig(4, 4))
    adapted.configure_model()
    with torch.no_grad():  # move the factors away from their SVD values, as training would
        for _, adapter in iter_adapters(adapted.backbone):
            for sub in adapter.subspaces:
                for factor in sub.factors():
                    factor.add_(0.01 * torch.randn_like(factor))
    folder = tempfile.mkdtemp(prefix="masm_export_")
    export_model(copy.deepcopy(adapted), folder, ExtractionSettings())  # merges the copy in place
    exported, _ = load_exported(folder)
    plain = timm.create_model(args.model, pretrained=False, num_classes=2, **kwargs)
    return {"plain_timm": plain, "exported": exported, "adapters_unmerged": adapted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_clip_quickgelu_224")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:  # on a shared CPU, one thread avoids OpenMP spin-waits against other processes
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: m.eval().to(device, dtype) for name, m in build(args).items()}
    images = torch.randn(args.batch, 3, 224, 224, device=device, dtype=dtype)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for round_ in range(args.warmup + args.rounds):
            for name, model in models.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(images)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain_timm"])
    print(
        f"{args.model} depth {args.depth}, batch {args.batch}, {args.dtype} on {device} "
        f"({torch.get_num_threads()} threads), "
        f"median of {args.rounds} interleaved rounds, torch {torch.__version__}"
    )
    print(f"{'model':<20} {'s/batch':>9} {'images/s':>9} {'throughput vs plain':>20}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:>9.4f} {args.batch / median:>9.1f} {base / median:>20.3f}")


if __name__ == "__main__":
    main()
