"""Shared fixtures: tiny random-init timm ViTs, and a guarantee that nothing reaches the network."""

from __future__ import annotations

import os

# Set before timm / wandb / albumentations are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from tests.background import JOBS, Finished, Runner
from tests.helpers import ROOT, TINY_VIT, TINY_VIT_KWARGS, tiny_args


@pytest.fixture
def make_vit() -> Callable[..., nn.Module]:
    """Build a tiny CLIP-style timm ViT (random init, eval mode); same seed gives the same weights."""

    def build(seed: int = 0, **overrides: object) -> nn.Module:
        torch.manual_seed(seed)
        return timm.create_model(TINY_VIT, pretrained=False, **{**TINY_VIT_KWARGS, **overrides}).eval()

    return build


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session", autouse=True)
def _weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Converted pretrained weights (the ViT's ONNX → safetensors) go to one cache per test session: converted at
    most once, and never into the user's ``~/.cache``."""
    from masm_lightning.training.weights import CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("weights_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint from a one-epoch fit of the tiny config, shared by the inference, export and report tests."""
    from masm_lightning.cli import main

    folder = tmp_path_factory.mktemp("tiny_fit")
    cli = main(["fit", *tiny_args(folder, "--trainer.max_epochs", "1")])
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def _fresh_imports(probes: list[str]) -> dict[str, dict[str, list[str]]]:
    command = [sys.executable, "-m", "tests.fresh_imports", *probes]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return _answers(result.stdout)


def _answers(stdout: str) -> dict[str, dict[str, list[str]]]:
    answers = json.loads(stdout.splitlines()[-1])
    failed = {probe: answer["error"] for probe, answer in answers.items() if "error" in answer}
    assert not failed, f"a probe could not be imported: {failed}"
    return answers


@pytest.fixture(scope="session")
def fresh_imports(request: pytest.FixtureRequest) -> Callable[[str], dict[str, list[str]]]:
    """``fresh_imports("module")`` or ``fresh_imports("module:attribute")``: the top-level modules a fresh
    interpreter holds after importing the module (``["import"]``) and after reading the attribute
    (``["attribute"]``). The probes in ``tests.background.FRESH_IMPORT_PROBES`` are answered by one background job
    (tests using it carry ``@pytest.mark.background("fresh_imports")``); any other probe gets a subprocess of its
    own."""
    answers: dict[str, dict[str, list[str]]] = {}

    def lookup(probe: str) -> dict[str, list[str]]:
        if not answers:
            runner = request.config.stash.setdefault(_RUNNER, Runner())
            answers.update(_answers(runner.result("fresh_imports").commands[0].check()))
        if probe not in answers:
            answers.update(_fresh_imports([probe]))
        return answers[probe]

    return lookup


# --- long commands beside the suite (tests/background.py) ---

_RUNNER = pytest.StashKey[Runner]()
_THREADS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only the jobs of tests that will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that wait for a background job run last; their jobs start now, the longest first."""
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("background") is not None)
    wanted = {marker.args[0] for item in items for marker in item.iter_markers("background")}
    if wanted and not config.option.collectonly:
        runner = config.stash.setdefault(_RUNNER, Runner())
        runner.start([name for name in JOBS if name in wanted])
        # The jobs run on one thread; the suite keeps the other core until they are done (no oversubscription).
        config.stash[_THREADS] = torch.get_num_threads()
        torch.set_num_threads(1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    runner, threads = item.config.stash.get(_RUNNER, None), item.config.stash.get(_THREADS, None)
    if threads is not None and runner is not None and not runner.busy():
        torch.set_num_threads(threads)  # the jobs are done: every core for the tests left
        del item.config.stash[_THREADS]


def pytest_unconfigure(config: pytest.Config) -> None:
    runner = config.stash.get(_RUNNER, None)
    if runner is not None:
        runner.stop()


@pytest.fixture
def background(request: pytest.FixtureRequest) -> Finished:
    """The finished job named by the test's ``@pytest.mark.background("<job>")`` (started now if it was not)."""
    marker = request.node.get_closest_marker("background")
    assert marker is not None, "the background fixture needs @pytest.mark.background('<job>')"
    runner = request.config.stash.setdefault(_RUNNER, Runner())
    return runner.result(marker.args[0])
