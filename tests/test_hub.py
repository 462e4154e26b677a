"""The hub, offline-safe: upload tested up to the client's boundary, loading from a cache laid out as the hub lays
it; nothing here reaches the network (conftest sets HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from masm_lightning.cli import main
from masm_lightning.sharing.checkpoint import load_checkpoint
from masm_lightning.sharing.formats import load_adapter
from masm_lightning.sharing.hub import HubError, resolve

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def adapter_folder(tmp_path, tiny_checkpoint):
    out = tmp_path / "adapter"
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--adapter", "true"])
    return out


def _lay_out_cache(cache, repo: str, folder) -> None:
    """``models--ORG--NAME/snapshots/<sha>/…`` and ``refs/main`` holding the sha, as snapshot_download leaves them."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / SHA)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SHA)


def test_a_cached_hub_model_loads_offline_and_scores_like_the_checkpoint(
    tmp_path, adapter_folder, tiny_checkpoint, monkeypatch
):
    cache = tmp_path / "hub_cache"
    _lay_out_cache(cache, "my-lab/masm-tiny", adapter_folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    folder = resolve("hf-hub:my-lab/masm-tiny")
    assert folder == cache / "models--my-lab--masm-tiny" / "snapshots" / SHA
    loaded, config = load_adapter(folder)
    detector, _ = load_checkpoint(tiny_checkpoint)
    images = torch.randn(3, 3, config["input"]["image_size"], config["input"]["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), detector(images))


def test_a_model_absent_from_the_cache_fails_at_once_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(HubError) as error:
        resolve("hf-hub:my-lab/not-downloaded")
    message = str(error.value)
    assert "\n" not in message and "hf-hub:my-lab/not-downloaded" in message and "cache" in message


def test_a_malformed_hub_id_is_refused_naming_it():
    with pytest.raises(HubError, match="'nothing-here' is not of the form ORG/NAME"):
        resolve("hf-hub:nothing-here")


def test_push_to_hub_creates_the_repo_and_uploads_the_exported_folder(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, **kwargs):
        calls["upload"] = kwargs
        calls["files"] = sorted(p.name for p in kwargs["folder_path"].iterdir())

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    out = tmp_path / "adapter"
    push = ["--push-to-hub", "my-lab/masm-tiny", "--private", "true"]
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--adapter", "true", *push])
    assert calls["create"] == ("my-lab/masm-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"]["repo_id"] == "my-lab/masm-tiny" and calls["upload"]["folder_path"] == out
    assert calls["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "https://hub.example/my-lab/masm-tiny" in capsys.readouterr().out


def test_push_to_hub_without_network_exits_2_with_one_line(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "a"), "--adapter", "true",
              "--push-to-hub", "my-lab/masm-tiny"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot upload to 'my-lab/masm-tiny'" in err[0] and "name resolution" in err[0]


def test_detector_load_takes_an_adapter_folder_and_a_cached_hub_id(
    tmp_path, adapter_folder, tiny_checkpoint, monkeypatch
):
    import numpy as np

    from masm_lightning.inference.detector import Detector

    cache = tmp_path / "hub_cache"
    _lay_out_cache(cache, "my-lab/masm-tiny", adapter_folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    crops = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    expected = Detector.load(tiny_checkpoint, device="cpu").classifier.fake_probability(crops)
    for source in (adapter_folder, "hf-hub:my-lab/masm-tiny"):
        detector = Detector.load(source, device="cpu")
        np.testing.assert_allclose(detector.classifier.fake_probability(crops), expected, rtol=1e-4, atol=1e-6)
