"""The ``README.md`` model card of an adapter folder: YAML front matter the hub indexes, and the sections readers need.

Front matter: ``library_name``, ``license``, ``datasets``, ``tags``, ``base_model`` and, where the run's
``results.md`` is found, a ``model-index`` with its test metrics. The licence follows the training data: weights
fitted on research-only data (FaceForensics++, Celeb-DF, DFDC, DFD, DeepfakeBench's copies of them) are shared
for non-commercial research only (``cc-by-nc-4.0``); weights fitted on the generated demo data carry the
project's licence (``apache-2.0``); anything else is ``other`` and the card says to check the data's terms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..training.run_folder import training_run_folder

__all__ = ["find_results", "license_for", "model_card", "parse_results", "training_datasets"]

# Datasets whose terms forbid commercial use (their licence or access agreement): weights fitted on them inherit it.
RESEARCH_ONLY = ("ffpp", "faceforensics", "dfd", "celebdf", "celeb-df", "dfdc", "dfdcp", "deepfakebench")
DEMO = "masm_lightning-generated-demo"
_ROW = re.compile(r"^\|\s*(frame|video)\s*\|(.+)\|\s*(\d+)\s*\|\s*$")


def training_datasets(run_config: Mapping[str, Any] | None) -> list[str]:
    """The training data named in a run's ``config.yaml`` (LightningCLI writes it in the run folder): the demo
    data module, or the ``train`` source's dataset and name; empty when unknown."""
    if not run_config:
        return []
    data = run_config.get("data") or {}
    if "DemoDataModule" in str(data.get("class_path", "")):
        return [DEMO]
    train = (data.get("init_args") or {}).get("train") or {}
    names = [str(train[key]) for key in ("dataset", "name") if train.get(key)]
    return list(dict.fromkeys(names))


def license_for(datasets: Sequence[str]) -> str:
    """``cc-by-nc-4.0`` if any training set is research-only, ``apache-2.0`` for the demo data alone, else ``other``."""
    lowered = [d.lower() for d in datasets]
    if any(any(name in d for name in RESEARCH_ONLY) for d in lowered):
        return "cc-by-nc-4.0"
    if lowered and all(d == DEMO for d in lowered):
        return "apache-2.0"
    return "other"


def find_results(checkpoint: str | Path) -> Path | None:
    """The ``results.md`` of a test of ``checkpoint``: in its own run folder, or in a sibling run folder (``test``
    writes a new ``version_N``) whose ``results.md`` names this checkpoint; the newest such file wins."""
    checkpoint = Path(checkpoint)
    run = training_run_folder(checkpoint) or checkpoint.parent
    own = run / "results.md"
    if own.is_file():
        return own
    candidates = []
    for path in run.parent.glob("*/results.md"):
        try:
            text = path.read_text()
        except OSError:
            continue
        if str(checkpoint) in text or str(checkpoint.resolve()) in text:
            candidates.append(path)
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def parse_results(text: str) -> dict[str, dict[str, float]]:
    """``results.md`` → ``{test set: {"video_auc": …, "frame_eer": …, …}}`` (``n/a`` cells are skipped)."""
    results: dict[str, dict[str, float]] = {}
    current: str | None = None
    columns: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            results[current] = {}
        elif line.startswith("| per |"):
            columns = [c.strip().lower() for c in line.strip("|").split("|")[1:-1]]
        elif current is not None and (match := _ROW.match(line)):
            level, cells = match.group(1), [c.strip() for c in match.group(2).split("|")]
            for column, cell in zip(columns, cells):
                if cell != "n/a":
                    results[current][f"{level}_{column}"] = float(cell)
    return {name: values for name, values in results.items() if values}


def _front_matter(config: Mapping[str, Any], datasets: list[str], licence: str, results: dict) -> dict[str, Any]:
    base = config["base_model"]
    front: dict[str, Any] = {
        "library_name": "masm_lightning",
        "license": licence,
        "pipeline_tag": "image-classification",
        "tags": ["deepfake-detection", "face-forgery-detection", "masm", "subspace-adapter", "timm", "pytorch"],
        "base_model": f"timm/{base['name']}" if base.get("pretrained") else base["name"],
    }
    if datasets:
        front["datasets"] = datasets
    if results:
        front["model-index"] = [
            {
                "name": config.get("name") or "masm-detector",
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "deepfake detection"},
                        "dataset": {"name": name, "type": name},
                        "metrics": [
                            {"type": key.split("_", 1)[1], "value": round(value, 4), "name": key.replace("_", " ")}
                            for key, value in values.items()
                        ],
                    }
                    for name, values in results.items()
                ],
            }
        ]
    return front


def model_card(
    config: Mapping[str, Any],
    datasets: list[str],
    results: dict[str, dict[str, float]] | None = None,
    licence: str | None = None,
) -> str:
    """The model card (Markdown with YAML front matter) of an adapter folder described by ``config``
    (``adapter_config.json``'s content)."""
    results = results or {}
    licence = licence or license_for(datasets)
    base = config["base_model"]
    adapters = config["adapters"] or {}
    crop = config["face_crop"]
    front = yaml.safe_dump(_front_matter(config, datasets, licence, results), sort_keys=False, allow_unicode=True)
    if base.get("checkpoint_path"):
        weights = f"the weights file `{Path(base['checkpoint_path']).name}` (model.checkpoint_path)"
    elif base.get("pretrained"):
        weights = f"timm's pretrained `{base['name']}`"
    else:
        weights = f"a random-init `{base['name']}` (seed {base.get('backbone_seed', 0)}: a demo, not a real detector)"
    data_line = ", ".join(datasets) if datasets else "not recorded (pass `--datasets` to `export`)"
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {config.get('name') or 'MASM deepfake detector'}",
        "",
        "## What it detects",
        "",
        "A real/fake classifier for **face crops**: it scores how likely a face was manipulated (face swap, "
        "reenactment, blending), frame by frame; a video's score aggregates its frames. It outputs "
        f"`softmax(logits)[:, 1]`, the fake probability, and decides *fake* at or above {config['threshold']:g}. "
        "It looks at faces only: it says nothing about audio, background edits or fully generated scenes.",
        "",
        "## How it was trained",
        "",
        f"- Base model: {weights}; fingerprint of the base weights `{base['fingerprint']}`.",
        f"- Method: MASM (multi-artifact subspace adapters, arXiv 2601.01041): each chosen linear map is split by SVD "
        f"into a frozen semantic part and K={adapters.get('num_subspaces')} trainable artifact subspaces of rank "
        f"{adapters.get('subspace_rank')} on `{', '.join(adapters.get('targets') or [])}`"
        + (f"; FMSD selected {len(config['selection'])} layers" if config.get("selection") else "")
        + ".",
        f"- Training data: {data_line}.",
        f"- Input: {config['input']['image_size']} px face crops (`{crop.get('crop')}` crop, scale "
        f"{crop.get('scale')}, {crop.get('size')} px stored as {crop.get('image_format')}), mean "
        f"{list(config['input']['mean'])}, std {list(config['input']['std'])}.",
        f"- Files: `adapter_model.safetensors` holds only the trained factors and the head ({config['dtype']}); "
        "the base weights are rebuilt from their source and checked against the fingerprint.",
        "",
    ]
    if results:
        lines += ["Test results (from the run's `results.md`):", "", "| test set | metric | value |", "|---|---|---:|"]
        lines += [
            f"| {name} | {key} | {value:.4f} |" for name, values in results.items() for key, value in values.items()
        ]
        lines.append("")
    lines += [
        "## How to load",
        "",
        "```python",
        "from masm_lightning.inference.detector import Detector",
        "",
        'det = Detector.load("PATH_OR_hf-hub:ORG/NAME")',
        'result = det.score("clip.mp4")  # score, decision, status, per-frame records',
        "```",
        "",
        "or `python -m masm_lightning detect clip.mp4 --ckpt PATH_OR_hf-hub:ORG/NAME`. A different base (a local copy "
        "of the weights) is accepted only if its fingerprint matches.",
        "",
        "## Limitations",
        "",
        "- A score is evidence, not proof: detectors trained on one set of manipulations lose accuracy on unseen "
        "methods, compression levels and capture conditions; check the cross-dataset results above before relying on "
        "it, and have a person review consequential decisions.",
        "- Faces are found with MTCNN and cropped as in training; small, profile or occluded faces may be missed "
        "(status `no_face`) or scored poorly.",
        "- Demographic and capture biases of the training data carry over; it was not audited for them.",
        f"- Licence `{licence}`"
        + (
            ": the training data is for non-commercial research only, and so are these weights."
            if licence == "cc-by-nc-4.0"
            else "."
        )
        + (" Check the training data's terms before any use." if licence == "other" else ""),
        "",
    ]
    return "\n".join(lines)
