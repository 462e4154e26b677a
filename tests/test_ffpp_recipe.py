"""configs/ffpp.yaml end to end on the real FF++ sample: extraction → data module → fit → test, via the real CLI."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch

from masm_lightning.cli import main
from masm_lightning.sharing.checkpoint import face_crop_settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FFPP = SHARED / "FaceForensics++"
pytestmark = pytest.mark.skipif(not FFPP.is_dir(), reason=f"real FF++ sample not found at {FFPP}")


def recipe_args(tmp_path: Path) -> list[str]:
    """configs/ffpp.yaml with a tiny random ViT, CPU float32, a CSV logger and outputs in tmp_path."""
    ffpp = {"dataset": "ffpp", "root": str(FFPP), "methods": ["Deepfakes", "FaceSwap"]}
    crops = {"dataset": "folder", "root": str(SHARED / "dfdc_faces"), "crops": True, "name": "dfdc_crops"}
    return [
        "--config",
        str(ROOT / "configs" / "ffpp.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.precision",
        "32-true",
        "--trainer.max_steps",
        "3",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        json.dumps(
            {
                "class_path": "masm_lightning.training.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path), "name": "ffpp"},
            }
        ),
        "--model.backbone",
        "vit_base_patch16_clip_quickgelu_224",
        "--model.pretrained",
        "false",
        "--model.backbone_kwargs",
        json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8}),
        "--data.init_args.train",
        json.dumps(ffpp),
        "--data.init_args.test",
        json.dumps([ffpp, crops]),
        "--data.init_args.cache_dir",
        str(tmp_path / "faces"),
        "--data.init_args.extraction.frames",
        "3",
        "--data.init_args.extraction.size",
        "64",
        "--data.init_args.extract_workers",
        "1",
        "--data.init_args.extract_device",
        "cpu",
        "--data.init_args.train_frames",
        "2",
        "--data.init_args.eval_frames",
        "2",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
    ]


@pytest.mark.slow
def test_ffpp_recipe_extracts_once_fits_and_tests_across_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's run folders are relative: outputs/ffpp/<logger name>/version_N
    with (
        pytest.warns(UserWarning, match="no usable 'val' videos: validation is skipped") as record,
        pytest.warns(UserWarning, match="Total length of `list` across ranks is zero"),  # Lightning's, same cause
    ):
        fit = main(["fit", *recipe_args(tmp_path)])  # the sample has no val pair on disk
    # Nothing to select on: best.ckpt is not written, and said once by the data module, not at every epoch.
    assert not [w for w in record if "could not find the monitored key" in str(w.message)]
    data = fit.datamodule
    assert data.hparams.input_config == fit.model.data_config, "the CLI links the backbone's input config"
    train = data.datasets["train"]
    assert train.videos == [("ffpp", 0, "519"), ("ffpp", 1, "Deepfakes/519_515")]
    assert len(train) == 6 and fit.trainer.global_step == 3
    manifest = tmp_path / "faces" / "ffpp_c23" / "manifest.csv"
    stamp = json.loads((manifest.parent / "prepared.json").read_text())
    assert stamp["settings"]["frames"] == 3 and stamp["settings"]["crop"] == "aligned"
    last = tmp_path / "outputs" / "ffpp" / "ffpp" / "version_0" / "checkpoints" / "last.ckpt"
    assert Path(fit.trainer.checkpoint_callbacks[-1].best_model_path).resolve() == last
    assert not (last.parent / "best.ckpt").exists()
    checkpoint = torch.load(last, weights_only=True)
    assert face_crop_settings(checkpoint, last).crop == "aligned", "inference will crop as training did"
    assert checkpoint["FaceForgeryDataModule"]["face_crop"]["crop"] == "aligned", "in the data module's state"

    extracted_at = manifest.stat().st_mtime_ns
    test = main(["test", *recipe_args(tmp_path), "--ckpt_path", str(last)])
    assert manifest.stat().st_mtime_ns == extracted_at, "same settings: the faces are not extracted again"
    assert test.datamodule.test_names == ["ffpp_c23", "dfdc_crops"]
    ffpp_test = test.datamodule.datasets["test/ffpp_c23"]
    assert ffpp_test.videos == [("ffpp", 0, "634"), ("ffpp", 1, "FaceSwap/634_660")]
    with manifest.open() as f:  # 3 frames extracted per video, 2 evaluated: the first and the last
        extracted = sorted(int(row["frame_index"]) for row in csv.DictReader(f) if row["video_id"] == "634")
    assert len(extracted) == 3
    assert sorted(r.frame_index for r in ffpp_test.records if r.video_id == "634") == [extracted[0], extracted[-1]]
    metrics = test.trainer.callback_metrics
    for name in ("ffpp_c23", "dfdc_crops"):
        assert {f"test/{name}/video_auc", f"test/{name}/frame_auc"} <= metrics.keys()

    # `detect` crops as training did: the checkpoint's face-crop record is used (no fallback warning).
    out = tmp_path / "detect.json"
    clip = FFPP / "original_sequences" / "youtube" / "c23" / "videos" / "634.mp4"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*does not record its face-crop settings.*")
        main(["detect", str(clip), "--ckpt", str(last), "--frames", "2", "--out", str(out)])
    (record,) = json.loads(out.read_text())
    assert record["status"] == "ok" and record["frames"] == 2 and 0 <= record["score"] <= 1
