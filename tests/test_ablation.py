"""benchmarks/ablation.py --quick on the real data: the study's structure, arms that really differ, the random-mask
control replaying full MASM's counts, bit-identical repeats and a cache that resumes."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from masm_lightning.training.callbacks.random_mask import mask_counts

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


@pytest.fixture(autouse=True)
def _process_settings_restored() -> Iterator[None]:
    """The study quiets Lightning's and the package's loggers and runs on one thread in the process that runs it
    (``--jobs 1``); the tests after this one read those logs and use every thread."""
    names = ("lightning.pytorch", "lightning.fabric", "masm_lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def load_study():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = load_study()
    summaries = study.main(["--quick", "--out", str(tmp_path), "--verify"])
    out = capsys.readouterr().out

    # Structure: one table pair per setting, the three quick arms, one summary line per setting, then the last one.
    assert set(summaries) == {("mobilenetv2", "sbi"), ("mobilenetv2", "lofo")}
    for setting in ("sbi", "lofo"):
        assert f"### mobilenetv2 · {setting}" in out
    assert "smallest detectable paired difference" in out.split("running")[0]  # stated before any run
    for label in ("MASM, no mask, no constraints", "full MASM", "random mask (as many as MASM)"):
        assert out.count(f"| {label} | 1 |") == 2  # generalisation table, both settings
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

    for (_, setting), rows in summaries.items():
        assert list(rows) == ["plain", "masm", "random_mask"]
        runs = {arm: row["runs"][0] for arm, row in rows.items()}
        assert len({run["head_init"] for run in runs.values()}) == 1  # paired: the same initial head in every arm
        # The arms really differ: each changes what the model scores.
        scores = {arm: run["sets"]["dfdc_crops"]["video_scores"] for arm, run in runs.items()}
        assert scores["plain"] != scores["masm"] != scores["random_mask"] != scores["plain"]
        assert len(scores["plain"]) == 60  # the DFDC crops' videos
        # The control masks as many subspaces as full MASM did, at its decisions, but not the same ones.
        folder = tmp_path / "runs" / "mobilenetv2" / setting
        counts = mask_counts(folder / "masm" / "seed0" / "layer_masks.jsonl")
        trace = [
            json.loads(x) for x in (folder / "random_mask" / "seed0" / "random_masks.jsonl").read_text().splitlines()
        ]
        assert [(e["step"], len(e["masked"])) for e in trace[1:]] == list(counts.items())
        assert runs["plain"]["diagnostics"].get("masked_mean") is None
        assert runs["masm"]["diagnostics"]["masked_mean"] > 0

    # Resumable: the same command again runs nothing and reports the same numbers.
    again = study.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "running" not in out
    assert [line for line in out.splitlines() if line.startswith("ablation: backbone=")] == lines[:2]
    assert again.keys() == summaries.keys()


def test_skips_with_a_reason_without_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_study().main(["--quick", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == {}
    assert "ablation: skipped: dfdc_faces, ffhq_stylegan2 not found under" in capsys.readouterr().out
