"""`make demo`'s configuration: it runs end to end, it is the whole method at the recipe's strength, the README's
figures come from a run of today's config in which every mask rule fired, and (slow) it learns."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from masm_lightning.cli import main
from tests.background import Finished

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """The demo writes to outputs/… relative to where it runs: run it in a temporary folder."""
    monkeypatch.chdir(tmp_path)


def _demo_args(*extra: str) -> list[str]:
    return ["--config", DEMO, "--trainer.enable_progress_bar", "false", *extra]


@pytest.mark.slow
def test_demo_fit_then_test_runs_end_to_end_short(tmp_path):
    short = [
        "--data.init_args.videos",
        "{train: 8, val: 4, test: 8}",
        "--data.init_args.frames_per_video",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.log_every_n_steps",
        "1",
    ]
    main(["fit", *_demo_args(*short)])
    best = tmp_path / "outputs" / "demo" / "demo" / "version_0" / "checkpoints" / "best.ckpt"
    assert best.is_file()
    # The types routing assigned subspaces over are the training split's, kept for a resumed run.
    assert torch.load(best, weights_only=True)["masm"]["routed_types"] == ["demo_blend", "demo_upsample", "demo_colour"]
    tested = main(["test", *_demo_args(*short, "--ckpt_path", str(best))])
    assert tested.trainer.callback_metrics["test/demo/num_videos"] == 8
    # Every forgery type reported on its own, the one training never saw marked; which subspace responds to which.
    folder = Path(tested.trainer.log_dir)
    results = (folder / "results.md").read_text()
    for kind in ("demo_blend", "demo_upsample", "demo_colour"):
        assert f"| {kind} | " in results and f"| {kind} | n/a" not in results
    assert "| demo_grid | " in results and "| no (held out) |" in results
    assert (folder / "subspace_types.png").is_file()
    responses = json.loads((folder / "subspace_types.json").read_text())["demo"]
    assert responses["types"]["demo_grid"]["held_out"] and not responses["types"]["demo_blend"]["held_out"]
    # Routing assigns subspaces round-robin over the trained types; the held-out one never trained any.
    assigned = [responses["types"][k]["assigned_subspace"] for k in ("demo_blend", "demo_upsample", "demo_colour")]
    assert assigned == [0, 1, 2] and responses["types"]["demo_grid"]["assigned_subspace"] is None


@pytest.mark.parametrize("config", ["demo.yaml", "demo_vit.yaml"])
def test_demo_is_the_whole_method_at_the_recipe_strength(config):
    """The demos show what MASM is: a real pretrained backbone, both constraints as configs/ffpp.yaml sets them, and
    the selective mask with the recipe's rule thresholds (only its warm-up/interval scaled to the short run)."""
    demo, recipe = (yaml.safe_load((ROOT / "configs" / name).read_text()) for name in (config, "ffpp.yaml"))
    for key in ("lambda_orth", "lambda_spec", "spectral_cap", "lambda_semantic"):
        assert demo["model"][key] == recipe["model"][key] > 0, key
    assert demo["model"]["checkpoint_path"].startswith("package://")  # offline pretrained weights, not random
    (mask,) = [c for c in demo["trainer"]["callbacks"] if c["class_path"].endswith("SelectiveLayerMask")]
    (recipe_mask,) = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith("SelectiveLayerMask")]
    for key in ("granularity", "keep_ratio", "min_gsnr", "min_share", "fit_ratio", "hysteresis"):
        assert mask["init_args"][key] == recipe_mask["init_args"][key], key


def test_the_readmes_demo_figures_come_from_a_run_of_todays_config_in_which_every_mask_rule_fired():
    """docs/demo_run.json is written by benchmarks/demo_record.py from a `make demo` run, with the figures the README
    shows. After any change to configs/demo.yaml: rerun `make demo` and the script."""
    record = json.loads((ROOT / "docs" / "demo_run.json").read_text())
    digest = hashlib.sha256((ROOT / "configs" / "demo.yaml").read_bytes()).hexdigest()
    assert record["config"] == "configs/demo.yaml" and record["config_sha256"] == digest, "stale: rerun make demo"
    for rule in ("layer", "type", "gsnr"):  # every rule of the recipe's mask (keep_ratio is off in the recipe)
        assert record["fired"][rule] > 0, f"the {rule} rule never fired on the demo run: {record['fired']}"
    assert record["test"]["video_auc"] >= 0.9 and record["test"]["videos"] == 64
    held_out = [name for name, kind in record["test"]["types"].items() if kind["held_out"]]
    assert held_out == ["demo_grid"] and record["test"]["types"]["demo_grid"]["video_auc"] is not None
    readme = (ROOT / "README.md").read_text()
    for figure in ("demo_roc.png", "demo_subspace_types.png", "demo_layer_masks.png"):
        assert (ROOT / "docs" / "images" / figure).is_file() and f"docs/images/{figure}" in readme


@pytest.mark.slow
@pytest.mark.background("demo")
def test_demo_learns_with_mask_and_constraints_and_shows_both_figures(background: Finished) -> None:
    """`make demo`'s two commands, in a fresh process (tests/background.py): the fit and the test of its best
    checkpoint, with no warning printed."""
    fit, tested = (command.check() for command in background.commands)
    assert "Warning" not in fit + tested
    runs = background.folder / "outputs" / "demo" / "demo"
    trace = [json.loads(line) for line in (runs / "version_0" / "layer_masks.jsonl").read_text().splitlines()]
    assert trace, "the mask made no decision during the demo"
    masked = [s["masked"] for s in trace[-1]["subspaces"]]  # the mask as the fit ended
    assert 0 < sum(masked) < len(masked), "the mask should stop some subspaces, not all"
    assert (runs / "version_0" / "layer_masks.png").is_file()
    folder = runs / "version_1"  # the test's run folder
    with (folder / "metrics.csv").open() as file:
        (metrics,) = list(csv.DictReader(file))
    assert float(metrics["test/demo/num_videos"]) == 64
    assert float(metrics["test/demo/video_auc"]) >= 0.9, f"demo did not learn: {metrics}"
    assert (folder / "roc_demo.png").is_file() and (folder / "layer_masks.png").is_file()
    assert (folder / "subspace_types.png").is_file()
    assert "| demo_grid | " in (folder / "results.md").read_text()  # the held-out type, reported on its own
