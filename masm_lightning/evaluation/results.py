"""``results.md``: the test metrics of every test set as Markdown tables, written next to the ROC plots."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["results_markdown"]

_COLUMNS = (("AUC", "auc"), ("AP", "ap"), ("EER", "eer"), ("ACC", "acc"))


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def results_markdown(
    results: Mapping[str, Mapping[str, float]],
    threshold: float,
    source: str = "",
    trainable: int | None = None,
    unreadable: Mapping[str, int] | None = None,
    by_type: Mapping[str, Mapping[str, tuple[float, int, bool]]] | None = None,
) -> str:
    """One table per test set: frame and video rows of AUC, AP, EER and accuracy, with the counts behind them.

    Args:
        results: test-set name → :meth:`~masm_lightning.metrics.DetectionMetrics.compute` values as floats.
        threshold: the fake-probability threshold accuracy was computed at.
        source: what was tested (a checkpoint path), printed under the title.
        trainable: the model's trainable-parameter count, printed under the title (budget-matched comparisons).
        unreadable: test-set name → frames that could not be read and were left out; each set gets a status line
            (``complete``, or the count), so a table computed without some frames says so.
        by_type: test-set name → forgery type → (video AUC of that type's fakes against all the set's reals, fake
            videos, held out of training); a set with several fake types gets a table of them.
    """
    lines = ["# Test results", ""]
    if source:
        lines += [f"Checkpoint: `{source}`", ""]
    if trainable is not None:
        lines += [f"Trainable parameters: {trainable:,}", ""]
    lines += [
        f"Accuracy at threshold {threshold:g}; a video's score is the mean of its frames' fake probabilities. "
        "n/a: the set holds one class only, so ranking metrics are undefined. ROC curves: "
        "`roc_<set>.png` in this folder.",
        "",
    ]
    for name, values in results.items():
        lost = int((unreadable or {}).get(name, 0))
        status = f"{lost} unreadable frame(s) left out (see the run's log)" if lost else "complete"
        lines += [
            f"## {name}",
            "",
            f"Status: {status}",
            "",
            "| per | " + " | ".join(title for title, _ in _COLUMNS) + " | count |",
            "|---|" + "---:|" * (len(_COLUMNS) + 1),
        ]
        for level, count in (("frame", "num_frames"), ("video", "num_videos")):
            cells = " | ".join(_cell(float(values[f"{level}_{key}"])) for _, key in _COLUMNS)
            lines.append(f"| {level} | {cells} | {int(values[count])} |")
        lines.append("")
        types = (by_type or {}).get(name, {})
        if len(types) > 1:
            lines += [
                "Per forgery type: video AUC of that type's fakes against all real videos of the set. "
                "Held out: the training split holds no fake of that type.",
                "",
                "| forgery type | video AUC | fake videos | in training |",
                "|---|---:|---:|---|",
            ]
            for kind, (auc, fakes, held) in types.items():
                lines.append(f"| {kind} | {_cell(auc)} | {fakes} | {'no (held out)' if held else 'yes'} |")
            lines.append("")
    return "\n".join(lines)
