"""The README's code blocks and the names it gives, checked against the project (what can be checked offline).

- Every command of a ```bash block is one the project has: ``masm …`` and ``python -m masm_lightning …`` (also behind
  ``srun`` and ``torchrun … -m masm_lightning``) parse — run in-process with ``--print_config`` added, so every value
  is validated and nothing is trained or scored; ``make X`` names a Makefile target; ``python benchmarks/X.py`` and
  ``pytest PATH`` name files that exist. A bash array ``NAME=(…)`` is expanded where ``"${NAME[@]}"`` uses it.
  Placeholders such as ``<run>`` are left as they are: parsing a command never opens the files it names. Blocks that
  need data we do not have (FF++ at scale, several GPUs) are checked this way, not run. docs/training.md holds the
  README's longer training commands and is checked the same way.
- The ```python block that loads a ``Detector`` runs as written, in a temporary working folder, with one
  substitution: the checkpoint path it names (``outputs/…/<run>/…/best.ckpt``) becomes the tiny test checkpoint, and
  the ``clip.mp4`` it scores is a real FF++ clip from ``../shared/data`` (skipped when absent). Every other ```python
  block must compile.
- Every repository path the README names (``configs/…``, ``docs/…``, ``benchmarks/…``, …) exists; every ``make``
  target it names exists; every relative link of the README and of docs/*.md points at a file that exists and, with
  ``#anchor``, at a heading of that page.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from masm_lightning.cli import main
from tests.helpers import ROOT

README = ROOT / "README.md"
# Pages whose ```bash blocks are checked like the README's: the README's training commands live on in docs/training.md.
COMMAND_PAGES = [README, ROOT / "docs" / "training.md"]
CLIP = ROOT.parent / "shared" / "data" / "FaceForensics++/original_sequences/youtube/c23/videos/519.mp4"
# Top-level folders whose paths the README may name (outputs/ is what runs write, never checked).
REPO_FOLDERS = ("configs", "docs", "benchmarks", "tests", "requirements", "masm_lightning", "data", ".ci")


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def _commands(block: str) -> list[list[str]]:
    """The shell words of each command of a bash block: continuations joined, comments dropped, arrays expanded."""
    text = block.replace("\\\n", " ")
    arrays: dict[str, list[str]] = {}

    def define(match: re.Match[str]) -> str:
        arrays[match.group(1)] = shlex.split(match.group(2), comments=True)
        return ""

    text = re.sub(r"""^(\w+)=\(((?:[^()'"]|'[^']*'|"[^"]*")*)\)[ \t]*$""", define, text, flags=re.M)
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        expanded: list[str] = []
        for word in words:
            array = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
            expanded += arrays[array.group(1)] if array else [word]
        if expanded:
            commands.append(expanded)
    return commands


def _masm_args(words: list[str]) -> list[str] | None:
    """The arguments after the project's command, or None when ``words`` do not run the project's CLI."""
    if words[0] == "srun":
        words = words[1:]
    if words[0] in ("masm", ".venv/bin/masm"):
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "masm_lightning":  # python -m …, torchrun … -m …
            return words[i + 2 :]
    return None


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def _bash_commands() -> list[tuple[str, list[str]]]:
    return [
        (f"{page.relative_to(ROOT)}: {' '.join(words)[:80]}", words)
        for page in COMMAND_PAGES
        for block in _blocks(page, "bash")
        for words in _commands(block)
    ]


def test_the_readme_has_the_blocks_a_user_starts_from():
    bash = " ".join(" ".join(words) for _, words in _bash_commands())
    for command in ("make install", "make demo", "masm detect", "masm_lightning fit --config configs/ffpp.yaml"):
        assert command in bash, f"the README shows no `{command}` command"
    assert any("Detector.load" in block for block in _blocks(README, "python")), "the README shows no Python API"


def test_every_bash_command_parses_or_names_what_exists(capsys):
    """Each command is the project's CLI (parsed in full), a Makefile target, or a script/test path that exists."""
    targets = _makefile_targets()
    checked = 0
    for where, words in _bash_commands():
        args = _masm_args(words)
        if args is not None:
            if "--help" not in args and "-h" not in args:
                args = [*args, "--print_config"]
            with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()):
                main(args)
            assert exit_info.value.code == 0, f"{where}: does not parse: {capsys.readouterr().err.strip()}"
        elif words[0] == "make":
            assert set(words[1:]) <= targets, f"{where}: no such Makefile target (targets: {sorted(targets)})"
        elif words[0] == "python" and words[1].startswith("benchmarks/"):
            assert (ROOT / words[1]).is_file(), f"{where}: {words[1]} does not exist"
        elif Path(words[0]).name == "pytest":
            paths = [w for w in words[1:] if not w.startswith("-") and "/" in w]
            assert paths and all((ROOT / p).exists() for p in paths), f"{where}: a test path does not exist"
        else:
            pytest.fail(f"{where}: a command this test does not know how to check: teach it (tests/test_readme.py)")
        checked += 1
    assert checked >= 8


@pytest.mark.slow  # MTCNN over 32 frames of a real clip, twice
@pytest.mark.skipif(not CLIP.is_file(), reason=f"real FF++ sample clip not found at {CLIP}")
def test_the_python_api_block_runs_as_written(tmp_path, monkeypatch, tiny_checkpoint):
    (block,) = [b for b in _blocks(README, "python") if "Detector.load" in b]
    code, substituted = re.subn(r"""(["'])outputs/[^"']*<run>[^"']*\1""", repr(str(tiny_checkpoint)), block)
    assert substituted == 1, "the block names the checkpoint it loads as outputs/…/<run>/…"
    (tmp_path / "clip.mp4").symlink_to(CLIP)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.status == "ok" and 0 <= result.score <= 1 and result.frames, "clip.mp4 was scored, frame by frame"


def test_every_python_block_compiles():
    for block in _blocks(README, "python"):
        compile(block, "README.md", "exec")


def _named_paths(text: str) -> set[str]:
    folders = "|".join(re.escape(f) for f in REPO_FOLDERS)
    found = set(re.findall(rf"(?<![\w/.~-])((?:{folders})/[\w./-]*)", text))
    return {p.rstrip(".") for p in found if not re.search(r"[<*…]", p)}


def test_every_path_and_make_target_the_readme_names_exists():
    text = README.read_text()
    missing = sorted(p for p in _named_paths(text) if not (ROOT / p).exists())
    assert not missing, f"the README names paths that do not exist: {missing}"
    targets = _makefile_targets()
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", text))
    assert named and named <= targets, f"the README names Makefile targets that do not exist: {named - targets}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens (code blocks skipped)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    broken = []
    for link in links:
        if re.match(r"\w+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_the_evidence_answer_sits_between_the_markers_ablation_rewrites():
    """``benchmarks/ablation.py --write-docs`` replaces the text between these markers (and fails without them)."""
    text = README.read_text()
    start, end = "<!-- evidence:start -->", "<!-- evidence:end -->"
    assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end)
    assert "docs/evidence.md" in text[text.index(start) : text.index(end)]
    ablation = (ROOT / "benchmarks" / "ablation.py").read_text()
    assert start in ablation and end in ablation, "the script writes between the markers the README carries"
