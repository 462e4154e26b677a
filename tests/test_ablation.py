"""benchmarks/ablation.py --quick on the real data: the study's structure, arms that really differ, the random-mask
control replaying full MASM's counts, bit-identical repeats and a cache that resumes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from masm_lightning.training.callbacks.random_mask import mask_counts
from tests.background import Finished

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(
    not ((SHARED / "dfdc_faces").is_dir() and (SHARED / "ffhq_stylegan2").is_dir()),
    reason=f"the study's real data (dfdc_faces/, ffhq_stylegan2/) not found under {SHARED}",
)
LINE = re.compile(
    r"^ablation: backbone=mobilenetv2 setting=(sbi|lofo) primary=video_auc masm=[01]\.\d{3} plain=[01]\.\d{3} "
    r"diff=[+-]\d\.\d{3} ci=\[[+-]\d\.\d{3},[+-]\d\.\d{3}\] seeds_same_sign=[01]/1 claim=(yes|no)$"
)


def load_study():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.background("quick_study")
def test_quick_study(background: Finished) -> None:
    """``python benchmarks/ablation.py --quick --verify`` in a fresh process (tests/background.py), then the same
    command again."""
    first, repeat = background.commands
    out = first.check()

    # Structure: one table pair per setting, the three quick arms, one summary line per setting, then the last one.
    for setting in ("sbi", "lofo"):
        assert f"### mobilenetv2 · {setting}" in out
    assert out.count("### mobilenetv2 · ") == 2
    assert "smallest detectable paired difference" in out.split("running")[0]  # stated before any run
    labels = ("MASM, no mask, no constraints", "full MASM", "random mask (as many as MASM)")
    for label in labels:
        assert out.count(f"| {label} | 1 |") == 2  # generalisation table, both settings
    generalisation = [line for line in out.splitlines() if line.startswith(tuple(f"| {x} | 1 |" for x in labels))]
    assert [line.split(" | ")[0][2:] for line in generalisation] == [*labels, *labels]  # the arms, in order
    table: list[str] = []
    for row in [*out.splitlines(), ""]:  # every markdown table: the header's number of cells on every row
        if row.startswith("|"):
            table.append(row)
        elif table:
            assert len(table) >= 3 and len({r.count("|") - r.count("\\|") for r in table}) == 1, table
            table = []
    lines = [line for line in out.splitlines() if line.startswith("ablation: ")]
    assert len(lines) == 3
    assert all(LINE.match(line) for line in lines[:2]), lines
    assert re.match(r"^ablation: backbones=1 settings=2 runs=6 minutes=[\d.]+ claims=\d/2 answer=\w+$", lines[2])
    assert "repeat: mobilenetv2 sbi plain seed 0 identical=yes" in out

    for setting in ("sbi", "lofo"):
        folder = background.folder / "study" / "runs" / "mobilenetv2" / setting
        runs = {
            arm: json.loads((folder / arm / "seed0" / "result.json").read_text())
            for arm in ("plain", "masm", "random_mask")
        }
        assert len({run["head_init"] for run in runs.values()}) == 1  # paired: the same initial head in every arm
        # The arms really differ: each changes what the model scores.
        scores = {arm: run["sets"]["dfdc_crops"]["video_scores"] for arm, run in runs.items()}
        assert scores["plain"] != scores["masm"] != scores["random_mask"] != scores["plain"]
        assert len(scores["plain"]) == 60  # the DFDC crops' videos
        # The control masks as many subspaces as full MASM did, at its decisions, but not the same ones.
        counts = mask_counts(folder / "masm" / "seed0" / "layer_masks.jsonl")
        trace = [
            json.loads(x) for x in (folder / "random_mask" / "seed0" / "random_masks.jsonl").read_text().splitlines()
        ]
        assert [(e["step"], len(e["masked"])) for e in trace[1:]] == list(counts.items())
        assert runs["plain"]["diagnostics"].get("masked_mean") is None
        # Each result records what its run loaded: the method's modules by content, the libraries by version.
        depends = runs["masm"]["depends"]
        loaded = {"masm_lightning/adapters/layer.py", "masm_lightning/training/callbacks/layer_mask.py"}
        assert loaded <= set(depends["files"])
        assert not any(name.startswith("masm_lightning/serve") for name in depends["files"])
        assert {"torch", "timm", "lightning", "python"} <= set(depends["versions"])
        assert runs["masm"]["diagnostics"]["masked_mean"] > 0

    # Resumable: the same command again runs nothing and reports the same numbers.
    again = repeat.check()
    assert "running" not in again
    assert [line for line in again.splitlines() if line.startswith("ablation: backbone=")] == lines[:2]
    assert again.count("### mobilenetv2 · ") == 2


def test_skips_with_a_reason_without_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_study().main(["--quick", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == {}
    assert "ablation: skipped: dfdc_faces, ffhq_stylegan2 not found under" in capsys.readouterr().out


def test_cache_reruns_what_a_change_touches(tmp_path: Path) -> None:
    """A cached result is reused while its key and everything its run loaded are unchanged; a changed module of the
    package or a library's version makes it run again, and the study says which."""
    import collections

    study = load_study()
    import masm_lightning.adapters.layer  # noqa: F401  (loaded, as a run loads it)

    depends = study.dependencies()
    assert "masm_lightning/adapters/layer.py" in depends["files"] and "torch" in depends["versions"]
    folder = tmp_path / "run"
    folder.mkdir()

    def write(record: dict) -> None:
        (folder / "result.json").write_text(json.dumps({"key": "k1", "depends": record}))

    write(depends)
    assert study.cached(folder, "k1") is not None
    assert study.cached(folder, "k2") is None  # another protocol, configuration, data or script
    stale: collections.Counter[str] = collections.Counter()
    write({**depends, "files": {**depends["files"], "masm_lightning/adapters/layer.py": "0" * 64}})
    assert study.cached(folder, "k1", stale) is None
    write({**depends, "versions": {**depends["versions"], "torch": "0.1"}})
    assert study.cached(folder, "k1", stale) is None
    write({**depends, "files": {**depends["files"], "masm_lightning/gone.py": "0" * 64}})
    assert study.cached(folder, "k1", stale) is None
    assert list(stale) == [
        "masm_lightning/adapters/layer.py changed",
        f"torch 0.1 → {depends['versions']['torch']}",
        "masm_lightning/gone.py changed",
    ]
    (folder / "result.json").write_text(json.dumps({"key": "k1"}))  # a result from before the record: rerun
    assert study.cached(folder, "k1") is None


def test_a_claim_needs_every_planned_seed(tmp_path: Path) -> None:
    """A study still running claims nothing: the same clear effect is no claim on 2 of 5 seeds, a claim on 5."""
    import numpy as np

    study = load_study()
    labels = [1] * 20 + [0] * 20
    rng = np.random.default_rng(0)

    def run(separation: float) -> dict:
        scores = (np.array(labels) * separation + rng.normal(0, 1, len(labels))).tolist()
        primary = {"video_auc": float(study.auc(np.array(scores), np.array(labels))), "video_scores": scores}
        return {"sets": {study.PRIMARY: {**primary, "video_labels": labels}}}

    scale = dataclasses.replace(study.QUICK, seeds=(0, 1, 2, 3, 4), arms=("plain", "masm"), bootstrap=200)
    results = {("b", "sbi", arm, seed): run(3.0 if arm == "masm" else 0.0) for seed in range(5) for arm in scale.arms}
    partial = {key: value for key, value in results.items() if key[3] < 2}
    rows = study.summarise(partial, "b", "sbi", scale)
    assert rows["masm"]["ci"][0] > 0 and rows["masm"]["same_sign"] == 2 and not rows["masm"]["claim"]
    assert study.summary_line("b", "sbi", rows).endswith("seeds_same_sign=2/2 claim=no")
    rows = study.summarise(results, "b", "sbi", scale)
    assert rows["masm"]["claim"] and study.summary_line("b", "sbi", rows).endswith("seeds_same_sign=5/5 claim=yes")


def test_the_answer_names_the_direction_of_the_claims() -> None:
    """A claim that full MASM is worse is not a "yes": the summary line and the README say which way the claims go."""
    study = load_study()
    scale = dataclasses.replace(study.QUICK, seeds=(0, 1, 2, 3, 4))

    def cell(diff: float, claim: bool) -> dict:
        return {"masm": {"diff": diff, "ci": (diff - 0.05, diff + 0.05), "same_sign": 5, "paired": 5, "claim": claim}}

    cases = {
        "not_shown": ({("b", "sbi"): cell(-0.2, False), ("b", "lofo"): cell(0.2, False)}, "**Not shown.**"),
        "yes": ({("b", "sbi"): cell(0.01, False), ("b", "lofo"): cell(0.2, True)}, "**Yes, in 1 of 2 settings.**"),
        "no": ({("b", "sbi"): cell(-0.2, True), ("b", "lofo"): cell(0.01, False)}, "**No: full MASM is below"),
        "mixed": ({("b", "sbi"): cell(-0.1, True), ("b", "lofo"): cell(0.2, True)}, "**Full MASM differs from plain"),
    }
    for expected, (summaries, headline) in cases.items():
        assert study.answer(summaries) == expected
        assert study.readme_answer(summaries, scale, 0.19).startswith(headline)
