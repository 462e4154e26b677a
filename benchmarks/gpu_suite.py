"""The GPU suite: one command, one markdown table (issue 17 item 5). Run it through ``benchmarks/gpu_suite.sh``.

On one H100/H200 (about 6–8 minutes): CLIP ViT-L/14 at 224 px, bf16 autocast, batch 32 —

* train-step images/s and peak memory for full fine-tuning, Effort's composed residual, MASM, MASM + the layer
  mask's per-step work, and the floor (all weights frozen, gradient through every block), eager and compiled
  (``torch.compile``), steps interleaved round-robin in one process (``benchmarks/step_time.py``'s methods);
* inference images/s of MASM unmerged vs merged (``merge_adapters``), eager;
* MTCNN face extraction frames/s (``MTCNNDetector``, batched per video) on the GPU vs the CPU, on a generated
  720p frame batch (no data set needed);
* a one-process DDP (NCCL) ``fit`` of ``tests/conf/tiny.yaml`` through the real CLI: wall seconds and exit status.

Without a CUDA device it prints ``gpu suite: no CUDA device …`` and exits 0 (nothing measured). ``--dry-run`` runs
every section on the CPU at toy sizes (tiny ViT, batch 2, one measured step, gloo instead of NCCL) so the script
itself is exercised without a GPU; its numbers mean nothing. Ends with one line ``gpu suite: …``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import Method, build, step

from masm_lightning.adapters import merge_adapters

ROOT = Path(__file__).resolve().parents[1]
TRAIN_METHODS = ("full_ft", "composed", "masm", "masm_mask", "floor")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_section(args: argparse.Namespace, device: torch.device, autocast: torch.dtype | None) -> list[list[str]]:
    """Rows ``method | mode | images/s | peak MB | vs floor`` for every method, eager and compiled."""
    methods: list[Method] = []
    for compiled in (False, True) if args.compile else (False,):
        for name in TRAIN_METHODS:
            method = build(name, args.model, args.depth, 16, device)
            if compiled:
                method.name += "+c"
                method.forward = torch.compile(method.model)
            methods.append(method)
    size = args.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, 2, (args.batch,), device=device)
    for i in range(args.warmup + args.steps):
        for method in methods:
            step(method, images, labels, autocast, device)
            if i < args.warmup:
                method.times.clear()
                method.phases.clear()
                method.memory.clear()
    median = {m.name: statistics.median(m.times) for m in methods}
    rows = []
    for m in methods:
        suffix = "+c" if m.name.endswith("+c") else ""
        memory = f"{max(m.memory) / 2**20:.0f}" if m.memory else "–"
        rows.append(
            [
                m.name.removesuffix("+c"),
                "compiled" if suffix else "eager",
                f"{args.batch / median[m.name]:.1f}",
                memory,
                f"{median[m.name] / median['floor' + suffix]:.3f}",
            ]
        )
        m.model.cpu()  # free the device for the next section
    del methods
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _images_per_second(fn: Callable[[], object], batch: int, steps: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def inference_section(args: argparse.Namespace, device: torch.device, autocast: torch.dtype | None) -> list[list[str]]:
    """Rows ``model | images/s`` for MASM unmerged and merged."""
    method = build("masm", args.model, args.depth, 16, device)
    model = method.model.eval()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)

    def forward() -> object:
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            return model(images)

    unmerged = _images_per_second(forward, args.batch, args.steps, device)
    merge_adapters(model)
    merged = _images_per_second(forward, args.batch, args.steps, device)
    model.cpu()
    return [["MASM, adapters unmerged", f"{unmerged:.1f}"], ["MASM, merged (what `detect` runs)", f"{merged:.1f}"]]


def mtcnn_section(args: argparse.Namespace, devices: list[str]) -> list[list[str]]:
    """Rows ``device | frames/s`` of MTCNN on a generated batch of frames (a bright ellipse on noise)."""
    from masm_lightning.data.faces import MTCNNDetector

    rng = np.random.default_rng(0)
    height, width = args.frame_size
    frames = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(args.frames)]
    rows = []
    for device in devices:
        detector = MTCNNDetector(device)
        detector(frames[:2])  # warm-up (cuDNN autotuning, lazy init)
        start = time.perf_counter()
        for _ in range(args.mtcnn_rounds):
            detector(frames)
        _sync(torch.device(device))
        rows.append([device, f"{args.frames * args.mtcnn_rounds / (time.perf_counter() - start):.1f}"])
    return rows


def ddp_section(args: argparse.Namespace, dry_run: bool, out: Path) -> list[list[str]]:
    """Row ``strategy | exit status | wall s`` of a one-process DDP fit of the tiny config (real CLI)."""
    accelerator, backend = ("cpu", "gloo") if dry_run else ("gpu", "nccl")
    command = [
        sys.executable,
        "-m",
        "masm_lightning",
        "fit",
        "--config",
        str(ROOT / "tests" / "conf" / "tiny.yaml"),
        "--trainer.accelerator",
        accelerator,
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "lightning.pytorch.strategies.DDPStrategy",
        "--trainer.strategy.process_group_backend",
        backend,
        "--trainer.default_root_dir",
        str(out / "ddp_run"),
        "--data.init_args.root",
        str(out / "ddp_data"),
    ]
    start = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    wall = time.perf_counter() - start
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
    return [[f"DDP ({backend}), 1 process, tests/conf/tiny.yaml", str(done.returncode), f"{wall:.1f}"]]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_suite.md"), help="markdown table written here")
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at toy sizes")
    parser.add_argument("--model", default="vit_large_patch14_clip_quickgelu_224")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager only")
    parser.add_argument("--frames", type=int, default=32, help="MTCNN: frames per batch")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(720, 1280), metavar=("H", "W"))
    parser.add_argument("--mtcnn-rounds", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "inference", "mtcnn", "ddp"])
    args = parser.parse_args()
    if args.dry_run:
        args.model, args.depth, args.image_size, args.batch = "vit_tiny_patch16_224", 1, 224, 2
        args.steps, args.warmup, args.frames, args.frame_size, args.mtcnn_rounds = 1, 1, 2, (120, 160), 1
        device, autocast = torch.device("cpu"), None
    elif not torch.cuda.is_available():
        print(
            "gpu suite: no CUDA device (torch.cuda.is_available() is False); nothing measured. "
            "Run it on a GPU machine, or --dry-run to exercise the script on the CPU."
        )
        return 0
    else:
        device, autocast = torch.device("cuda"), torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
    out_dir = args.out.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run: toy sizes, numbers meaningless)"
    parts = [
        f"GPU suite: {name}, torch {torch.__version__}, {args.model} at {args.image_size} px, batch {args.batch}, "
        f"autocast {autocast}, median of {args.steps} interleaved steps after {args.warmup} warm-up\n"
    ]
    summary: dict[str, str] = {}
    started = time.perf_counter()
    if "train" not in args.skip:
        rows = train_section(args, device, autocast)
        parts.append(table(["method", "mode", "train images/s", "peak MB", "step vs floor"], rows))
        masm = next(r for r in rows if r[0] == "masm" and r[1] == "eager")
        summary["masm_vs_floor"] = masm[4]
    if "inference" not in args.skip:
        rows = inference_section(args, device, autocast)
        parts.append(table(["inference", "images/s"], rows))
        summary["merged_vs_unmerged"] = f"{float(rows[1][1]) / float(rows[0][1]):.3f}"
    if "mtcnn" not in args.skip:
        rows = mtcnn_section(args, ["cuda", "cpu"] if device.type == "cuda" else ["cpu"])
        parts.append(table(["MTCNN device", f"frames/s ({args.frame_size[0]}×{args.frame_size[1]})"], rows))
        if len(rows) == 2:
            summary["mtcnn_gpu_vs_cpu"] = f"{float(rows[0][1]) / float(rows[1][1]):.2f}"
    if "ddp" not in args.skip:
        rows = ddp_section(args, args.dry_run, out_dir / "gpu_suite_runs")
        parts.append(table(["fit", "exit status", "wall s"], rows))
        summary["ddp_rc"] = rows[0][1]
    text = "\n\n".join(parts) + "\n"
    args.out.write_text(text)
    print(text)
    print(
        f"gpu suite: device={device.type} wall_s={time.perf_counter() - started:.0f} "
        + " ".join(f"{k}={v}" for k, v in summary.items())
    )
    return 0 if summary.get("ddp_rc", "0") == "0" else 1


if __name__ == "__main__":
    sys.exit(main())
