"""What one training step and one evaluation batch of `make demo-vit` cost next to `make demo`'s, side by side.

    python benchmarks/demo_cost.py [--repeats 3]

Each demo's model is built from its config (configs/demo.yaml: MASM on MobileNetV2 at 96 px; configs/demo_vit.yaml:
MASM on DINOv2 ViT-S/14's attention and MLP projections at 112 px) with its batch size, and one optimizer step
(forward, backward, Adam, the constraint step) and one evaluation batch are timed in CPU seconds of this process on
one thread (median of ``--repeats`` after a warm-up), so other processes on the machine change the figures less
than wall-clock time would. The ratio is what carries over to another machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import yaml

from masm_lightning import MASMConfig
from masm_lightning.adapters.regularizers import apply_constraints
from masm_lightning.training.module import MASMDetector

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {"demo": "configs/demo.yaml", "demo_vit": "configs/demo_vit.yaml"}


def build(config: dict) -> tuple[MASMDetector, int, int]:
    model_cfg, data = config["model"], config["data"]["init_args"]
    model = MASMDetector(
        backbone=model_cfg["backbone"],
        backbone_kwargs=model_cfg.get("backbone_kwargs"),
        pretrained=model_cfg.get("pretrained"),
        checkpoint_path=model_cfg.get("checkpoint_path"),
        adapters=MASMConfig(**model_cfg["adapters"]),
        image_size=model_cfg.get("image_size"),
    )
    model.configure_model()
    return model, model.data_config["image_size"], data["batch_size"]


def cost(model: MASMDetector, size: int, batch: int, repeats: int) -> tuple[float, float]:
    """(CPU seconds of one optimizer step, of one evaluation batch)."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 2
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    steps, evals = [], []
    for _ in range(repeats + 1):
        model.train()
        start = time.process_time()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        apply_constraints(model.backbone, optimizer, model.constraints)
        optimizer.zero_grad()
        steps.append(time.process_time() - start)
        model.eval()
        start = time.process_time()
        with torch.no_grad():
            model(x)
        evals.append(time.process_time() - start)
    return statistics.median(steps[1:]), statistics.median(evals[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name, path in DEMOS.items():
        model, size, batch = build(yaml.safe_load((ROOT / path).read_text()))
        results[name] = cost(model, size, batch, args.repeats)
        print(
            f"{name}: {model.backbone_name} at {size} px, batch {batch}: step {results[name][0]:.2f} CPU s, "
            f"eval batch {results[name][1]:.2f} CPU s",
            flush=True,
        )
    (step, evaluation), (vit_step, vit_eval) = results["demo"], results["demo_vit"]
    print(
        f"demo_cost: demo_step_cpu_s={step:.2f} demo_vit_step_cpu_s={vit_step:.2f} step_ratio={vit_step / step:.1f} "
        f"eval_ratio={vit_eval / evaluation:.1f}"
    )


if __name__ == "__main__":
    main()
