"""``serve``: the web app's scoring rules without a browser, then the real page in headless Chromium (Playwright
driving the system browser; no browser download)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from masm_lightning.inference.detector import Detector
from masm_lightning.inference.serve import App, score_file
from tests.helpers import ROOT

CLIP = ROOT.parent / "shared" / "data" / "FaceForensics++" / "original_sequences" / "youtube" / "c23" / "videos"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def app(tiny_checkpoint) -> App:
    return App(Detector.load(tiny_checkpoint, device="cpu"), max_bytes=4096)


def test_a_corrupt_upload_gets_a_message_and_is_deleted(tmp_path, app):
    upload = tmp_path / "clip.mp4"
    upload.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(512))  # an MP4 header, then garbage
    record, _, _ = score_file(app, upload)
    assert record["status"] == "unreadable" and record["score"] is None
    assert record["message"].startswith("clip.mp4: not scored: not a video or image that can be read")
    assert not upload.exists()


def test_the_size_cap_counts_bytes_whatever_the_name(tmp_path, app):
    upload = tmp_path / "small.png"
    upload.write_bytes(os.urandom(5000))  # over the 4096-byte cap of this app
    record, result, _ = score_file(app, upload)
    assert record["status"] == "too_large" and result is None
    assert record["message"] == "small.png: not scored: too large (4.9 KB, the limit is 4.0 KB)"
    assert not upload.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_clip() -> Path | None:
    clips = sorted(CLIP.glob("*.mp4")) if CLIP.is_dir() else []
    return clips[0] if clips else None


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs the system chromium (make install installs it)")
def test_the_page_scores_a_real_clip_like_detect_and_reports_a_corrupt_upload(tmp_path, tiny_checkpoint):
    clip = _first_clip()
    if clip is None:
        pytest.skip(f"no real clip under {CLIP}")
    playwright_api = pytest.importorskip("playwright.sync_api")
    upload = tmp_path / clip.name  # the page deletes what it scored: give it a copy, never the shared file
    shutil.copy(clip, upload)
    expected = Detector.load(tiny_checkpoint, device="cpu").score(clip)
    assert expected.scored
    port = _free_port()
    temp = tmp_path / "server_tmp"  # where the server keeps uploads while it runs
    temp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    env["TMPDIR"] = str(temp)
    command = [sys.executable, "-m", "masm_lightning", "serve", "--ckpt", str(tiny_checkpoint), "--port", str(port)]
    log = tmp_path / "server.log"  # a file, not a pipe: nothing can block the server on a full pipe
    with log.open("w") as sink:
        server = subprocess.Popen([*command, "--device", "cpu"], stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline and server.poll() is None:
            url = re.search(r"open (http://\S+)", log.read_text())
            time.sleep(0.2)
        assert url, f"the server did not print its URL: {log.read_text()[-2000:]}"
        while time.monotonic() < deadline:  # the URL is printed just before uvicorn binds
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url.group(1), timeout=60_000)
            page.locator("#uploads input[type=file]").set_input_files(str(upload))
            page.locator("#score").click()
            verdict = page.locator("#verdict")
            verdict.filter(has_text="score").wait_for(timeout=120_000)
            text = verdict.inner_text()
            assert f"{clip.name}: {expected.decision.upper()} (score {expected.score:.4f})" in text
            # Timeline drawn, and one face row per scored face with its score as detect computed it.
            page.locator("#timeline img, #timeline canvas, #timeline svg").first.wait_for(timeout=30_000)
            grid = page.locator("#faces [role=grid]")  # Gradio's virtual table: the row count is in its ARIA
            assert grid.get_attribute("aria-rowcount") == str(len(expected.frames) + 1)  # + the header row
            shown = page.locator("#faces").inner_text()
            for face in expected.frames:
                assert f"{round(face.score, 4):g}" in shown and str(face.index) in shown
            page.screenshot(path=str(tmp_path / "scored.png"), full_page=True)
            bad = tmp_path / "broken.mp4"
            bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048))
            page.locator("#uploads input[type=file]").set_input_files(str(bad))
            page.locator("#score").click()
            verdict.filter(has_text="not scored").wait_for(timeout=60_000)
            assert "broken.mp4: not scored" in verdict.inner_text()
            page.screenshot(path=str(tmp_path / "corrupt.png"), full_page=True)
            browser.close()
        import httpx

        with clip.open("rb") as f:
            answer = httpx.post(f"{url.group(1)}api/score", files={"file": (clip.name, f)}, timeout=120)
        assert answer.headers.get("content-type") == "application/json", (answer.status_code, answer.text[:500])
        record = answer.json()
        assert answer.status_code == 200 and record["score"] == pytest.approx(expected.score, abs=1e-6)
        assert len(record["frames"]) == len(expected.frames), json.dumps(record)[:300]
        assert (tmp_path / "scored.png").stat().st_size > 0
    finally:
        server.terminate()
        server.wait(timeout=30)
    # Stopped as `kill`, `docker stop` and systemd stop it (SIGTERM): the uploads it held are gone.
    assert not list(temp.glob("masm_serve_*")), sorted(p.name for p in temp.rglob("*"))[:10]


def test_the_timeline_draws_every_scored_input_not_only_the_first():
    from masm_lightning.inference.serve import timeline_figure

    def record(name: str, scores: list[float]) -> dict:
        frames = [{"index": 10 * i, "time": 0.4 * i, "score": s} for i, s in enumerate(scores)]
        return {"name": name, "frames": frames, "threshold": 0.6}

    figure = timeline_figure([record("a.mp4", [0.1, 0.2, 0.3]), record("b.mp4", [0.9, 0.8])])
    (ax,) = figure.axes
    curves = [line for line in ax.get_lines() if line.get_label() in ("a.mp4", "b.mp4")]
    assert [list(c.get_ydata()) for c in curves] == [[0.1, 0.2, 0.3], [0.9, 0.8]]
    assert ax.get_xlabel() == "time (s)"
    assert any(list(line.get_ydata()) == [0.6, 0.6] for line in ax.get_lines())  # the threshold


@pytest.fixture(scope="module")
def api(tiny_checkpoint, tmp_path_factory):
    from fastapi.testclient import TestClient

    from masm_lightning.inference.serve import build_api

    app = App(Detector.load(tiny_checkpoint, device="cpu", face_crop=False), max_bytes=2**20)
    return TestClient(build_api(app, tmp_path_factory.mktemp("uploads")))


def _png() -> bytes:
    import cv2
    import numpy as np

    _, data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return data.tobytes()


FORM_MISTAKES = {
    "negative_frames": ({"frames": "-5"}, "frames must be >= 1, got -5"),
    "zero_frames": ({"frames": "0"}, "frames must be >= 1, got 0"),
    "text_frames": ({"frames": "two"}, "frames must be a whole number >= 1, got 'two'"),
    "aggregation": ({"aggregation": "median"}, "aggregation must be 'mean' or 'confident', got 'median'"),
    "threshold": ({"threshold": "2"}, "threshold must be a number in (0, 1), got '2'"),
    "nan_threshold": ({"threshold": "nan"}, "threshold must be a number in (0, 1), got 'nan'"),
}


@pytest.mark.parametrize(("form", "reason"), FORM_MISTAKES.values(), ids=FORM_MISTAKES.keys())
def test_an_invalid_form_value_is_a_422_with_one_line_naming_it(api, form, reason):
    answer = api.post("/api/score", files={"file": ("a.png", _png())}, data=form)
    assert (answer.status_code, answer.json()) == (422, {"error": reason})


def test_the_api_scores_with_its_settings_and_never_shows_a_server_path(api):
    answer = api.post("/api/score", files={"file": ("a.png", _png())}, data={"frames": "3", "threshold": "0.3"})
    assert answer.status_code == 200 and answer.json()["status"] == "ok" and answer.json()["threshold"] == 0.3
    empty = api.post("/api/score", files={"file": ("clip.mp4", b"")})
    assert empty.status_code == 422 and empty.json() == {
        "error": "the upload 'clip.mp4' is empty (0 bytes): send the file's content"
    }
    garbage = api.post("/api/score", files={"file": ("clip.mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(512))})
    assert garbage.status_code == 200 and garbage.json()["status"] == "unreadable"
    assert "/" not in garbage.json()["detail"] and "/" not in garbage.json()["message"], garbage.json()


def test_a_huge_image_is_refused_in_one_line_by_the_api(api, tmp_path):
    from tests.test_detector import _huge_png

    answer = api.post("/api/score", files={"file": ("huge.png", _huge_png(tmp_path / "huge.png").read_bytes())})
    record = answer.json()
    assert answer.status_code == 200 and record["status"] == "unreadable" and record["score"] is None
    assert record["message"] == (
        "huge.png: not scored: not a video or image that can be read "
        "(an image of 50000×50000 pixels, larger than the limit of 134 megapixels)"
    )


def test_the_page_settings_keep_every_other_option_the_app_was_started_with(tiny_checkpoint):
    from masm_lightning.inference.detector import DetectorOptions

    started = DetectorOptions(face_crop=False, workers=3, chunk_frames=2, batch_size=5, aggregation="confident")
    app = App(Detector.load(tiny_checkpoint, "cpu", started))
    configured = app.configured(frames=7, aggregation="mean", threshold=0.3)
    assert configured.options == dataclasses.replace(started, frames=7, aggregation="mean", threshold=0.3)
    assert (configured.workers, configured.chunk_frames, configured.batch_size) == (3, 2, 5)
    assert configured.classifier is app.detector.classifier, "the model is shared, not reloaded"
