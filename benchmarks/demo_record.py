"""Record a demo run for the README: its figures into docs/images/ and its numbers into docs/<demo>_run.json.

    make demo && python benchmarks/demo_record.py [--wall-s SECONDS]
    make demo-vit && python benchmarks/demo_record.py --demo demo_vit [--wall-s SECONDS]

The README's demo figures and numbers come from one run of ``configs/<demo>.yaml``; this script is how they get
there. It reads the newest fit run folder under ``outputs/<demo>/<demo>/`` (the one with ``checkpoints/``) and the
newest test run folder after it (the one with ``results.md``), copies ``roc_demo.png``, ``subspace_types.png`` and
the fit's ``layer_masks.png`` to ``docs/images/<demo>_*.png``, and writes ``docs/<demo>_run.json``: the SHA-256 of
the config's bytes, how many masks each rule of the selective layer mask set over the run (``fired``, from the fit's
``layer_masks.jsonl``), the test's frame and video AUC and every forgery type's video AUC (from ``results.md``),
and ``--wall-s`` (fit + test, e.g. from ``/usr/bin/time``) when given. ``tests/test_demo.py`` checks that the record
belongs to today's config (and, for ``make demo``, that every rule fired in it). Ends with one line
``demo record: config=… fired_layer=… fired_type=… fired_gsnr=… video_auc=… held_out_auc=…``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"roc_demo.png": "roc.png", "subspace_types.png": "subspace_types.png", "layer_masks.png": "layer_masks.png"}


def _versions(runs: Path) -> list[Path]:
    return sorted(runs.glob("version_*"), key=lambda p: int(p.name.rpartition("_")[2]))


def _test_metrics(folder: Path) -> dict[str, float]:
    with (folder / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, float] = {}
    for row in rows:
        out |= {key: float(value) for key, value in row.items() if key.startswith("test/") and value}
    return out


def _type_aucs(results: str) -> dict[str, dict[str, object]]:
    """Per forgery type: video AUC and whether training saw it (the table ``results.md`` writes)."""
    rows = re.findall(r"^\| (\w+) \| ([0-9.]+|n/a) \| (\d+) \| (yes|no \(held out\)) \|$", results, re.MULTILINE)
    return {
        name: {"video_auc": None if auc == "n/a" else float(auc), "fake_videos": int(n), "held_out": seen != "yes"}
        for name, auc, n, seen in rows
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", choices=["demo", "demo_vit"], default="demo", help="make demo or make demo-vit")
    parser.add_argument("--wall-s", type=float, default=None, help="fit + test wall time, data generation included")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.runs = ROOT / "outputs" / args.demo / args.demo
    args.config = ROOT / "configs" / f"{args.demo}.yaml"
    versions = _versions(args.runs)
    fits = [v for v in versions if (v / "checkpoints").is_dir() and (v / "layer_masks.jsonl").is_file()]
    if not fits:
        raise SystemExit(f"error: no fit run folder under {args.runs}: run `make demo` first")
    fit = fits[-1]
    tests = [v for v in versions if int(v.name.rpartition("_")[2]) > int(fit.name.rpartition("_")[2])]
    tests = [v for v in tests if (v / "results.md").is_file()]
    if not tests:
        raise SystemExit(f"error: no test run folder after {fit}: `make demo` tests the best checkpoint after fit")
    test = tests[-1]
    trace = [json.loads(line) for line in (fit / "layer_masks.jsonl").read_text().splitlines() if line.strip()]
    metrics = _test_metrics(test)
    types = _type_aucs((test / "results.md").read_text())
    record = {
        "config": str(args.config.resolve().relative_to(ROOT)),
        "config_sha256": hashlib.sha256(args.config.read_bytes()).hexdigest(),
        "fit_run": str(fit.relative_to(ROOT)) if fit.is_relative_to(ROOT) else str(fit),
        "steps": trace[-1]["step"],
        "decisions": len(trace),
        "fired": trace[-1]["fired"],
        "test": {
            "video_auc": metrics["test/demo/video_auc"],
            "frame_auc": metrics["test/demo/frame_auc"],
            "videos": int(metrics["test/demo/num_videos"]),
            "types": types,
        },
        "wall_s": args.wall_s,
    }
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    sources = {(fit if name == "layer_masks.png" else test) / name: target for name, target in FIGURES.items()}
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:  # the mask heatmap comes from the fit (the test run has none of its own), the rest from the test
        raise SystemExit(f"error: the run lacks {', '.join(missing)}: rerun the demo with today's config")
    for source, target in sources.items():
        shutil.copyfile(source, images / f"{args.demo}_{target}")
    (args.out / f"{args.demo}_run.json").write_text(json.dumps(record, indent=2) + "\n")
    held = [t["video_auc"] for t in types.values() if t["held_out"]]
    fired = record["fired"]
    print(
        f"demo record: demo={args.demo} config={record['config']} steps={record['steps']} fired_layer={fired['layer']} "
        f"fired_type={fired['type']} fired_gsnr={fired['gsnr']} video_auc={record['test']['video_auc']:.3f} "
        f"held_out_auc={held[0] if held else 'n/a'}"
    )


if __name__ == "__main__":
    main()
