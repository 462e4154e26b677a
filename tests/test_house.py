"""The shape of the house: layers that import one way, light modules that stay light, one command line."""

from __future__ import annotations

import ast
import itertools
import runpy
import sys
from pathlib import Path
from unittest import mock

import pytest

from masm_lightning.cli import main
from tests.helpers import ROOT, run_masm

PACKAGE = ROOT / "masm_lightning"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import of a package module, at any depth of the file."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_package_modules_import_each_other_without_a_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # A package's __init__ importing its own submodules is how packages re-export; only other edges count.
    nested = lambda a, b: a.startswith(b + ".") or b.startswith(a + ".")
    real = [c for c in cycles if not any(nested(a, b) for a, b in itertools.pairwise(c))]
    assert not real, f"import cycles: {real}"


def test_no_module_imports_another_modules_private_name():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for module, names in _imports(path):
            if module.startswith("masm_lightning"):
                offenders += [
                    f"{_module_name(path)} imports {module}.{n}"
                    for n in names
                    if n.startswith("_") and not n.startswith("__")
                ]
    assert not offenders, offenders


def test_the_adapter_library_imports_nothing_of_the_program():
    for path in (PACKAGE / "adapters").rglob("*.py"):
        for module, _ in _imports(path):
            assert not module.startswith("masm_lightning") or module.startswith("masm_lightning.adapters"), (
                f"{path.name} imports {module}"
            )


@pytest.mark.slow
@pytest.mark.background("fresh_imports")
@pytest.mark.parametrize(
    "module",
    [
        "masm_lightning.sharing.export",
        "masm_lightning.sharing.formats",
        "masm_lightning.sharing.checkpoint",
        "masm_lightning.adapters",
        "masm_lightning.data.settings",
    ],
)
def test_light_modules_load_neither_the_video_stack_nor_albumentations(fresh_imports, module):
    heavy = sorted(set(fresh_imports(module)["import"]) & {"av", "albumentations", "facenet_pytorch"})
    assert not heavy, f"importing {module} pulled in {heavy}"


def test_the_top_level_help_lists_every_command(capsys):
    with mock.patch.object(sys, "argv", ["masm", "--help"]), pytest.raises(SystemExit) as exit_info:
        runpy.run_module("masm_lightning", run_name="__main__")  # `python -m masm_lightning --help`
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "preprocess", "detect", "export"):
        assert f"    {command} " in out, f"{command} missing from --help:\n{out}"


def test_the_masm_console_script_is_installed_and_is_the_same_command_line(capsys):
    # `make install` installs the `masm` console script ([project.scripts]); run_masm runs that file.
    assert run_masm("detect", "--help") == 0
    out = capsys.readouterr().out
    assert "--ckpt" in out and "--config" in out


COMMAND_MISTAKES = {
    "detect_missing_checkpoint": (["detect", "clip.mp4", "--ckpt", "nope.ckpt"], "nope.ckpt"),
    "export_missing_checkpoint": (["export", "--ckpt", "nope.ckpt", "--out", "x"], "nope.ckpt"),
    "preprocess_missing_root": (
        ["preprocess", "--dataset", "dfdc", "--root", "no/such/dir", "--out", "o"],
        "no/such/dir",
    ),
    "preprocess_unknown_option": (["preprocess", "--dataset", "dfdc", "--rooot", "x"], "--rooot"),
}


@pytest.mark.parametrize(("argv", "message"), COMMAND_MISTAKES.values(), ids=COMMAND_MISTAKES.keys())
def test_a_mistake_on_any_command_is_one_message_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:  # any other exception is a traceback: the test fails
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err and "Traceback" not in err


def _declared_requirements() -> set[str]:
    import re

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"]
    return {re.split(r"[<>=!\[; ]", n, maxsplit=1)[0].lower().replace("_", "-") for n in names}


def test_every_third_party_package_the_library_imports_is_declared():
    import importlib.metadata

    providers = importlib.metadata.packages_distributions()
    declared = _declared_requirements()
    missing = set()
    for path in PACKAGE.rglob("*.py"):
        for module, _ in _imports(path):
            top = module.split(".")[0]
            if not top or top == "masm_lightning" or top in sys.stdlib_module_names:
                continue
            distributions = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
            if not distributions & declared:
                missing.add(f"{top} ({', '.join(sorted(distributions))}) in {_module_name(path)}")
    assert not missing, f"imported but not in [project] dependencies: {sorted(missing)}"


# The package's roles in the order imports point: a module imports from its own group or from groups before it,
# never after (the README's layout block lists them in this order).
GROUPS = (
    ("base", ("masm_lightning.errors", "masm_lightning.io", "masm_lightning.performance", "masm_lightning.moved")),
    ("adapters", ("masm_lightning.adapters",)),
    ("data, evaluation", ("masm_lightning.data", "masm_lightning.evaluation")),
    ("training", ("masm_lightning.training",)),
    ("sharing", ("masm_lightning.sharing",)),
    ("inference", ("masm_lightning.inference",)),
    ("commands", ("masm_lightning.commands",)),
    ("cli", ("masm_lightning.cli", "masm_lightning.__main__", "masm_lightning")),
)


def _group(module: str) -> int:
    """Index in GROUPS of the group a package module belongs to (the longest matching prefix)."""
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(GROUPS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} belongs to no group of tests/test_house.py's GROUPS: place it (and in the README)"
    return max(matches)[1]


def test_every_import_points_to_the_same_group_or_an_earlier_one():
    backwards = [
        f"{module} ({GROUPS[_group(module)][0]}) imports {target} ({GROUPS[_group(target)][0]})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _group(target) > _group(module)
    ]
    assert not backwards, "imports pointing against the order of the groups:\n" + "\n".join(backwards)


def test_the_readme_layout_block_lists_every_group_in_import_order():
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in readme.split("```") if b.lstrip("\n").startswith("masm_lightning/")]
    assert len(blocks) == 1, "README.md has one layout block (a fenced block starting with `masm_lightning/`)"
    listed = []  # (group index, name) in the order the block lists them
    for line in blocks[0].splitlines()[1:]:
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a description's continuation line
        names = line.strip().split("  ")[0]
        for name in names.split(", "):
            module = "masm_lightning" if name == "__init__.py" else "masm_lightning." + name.strip().rstrip("/")
            listed.append((_group(module.removesuffix(".py")), name))
    order = [index for index, _ in listed]
    assert order == sorted(order), f"the README lists the groups out of import order: {listed}"
    top_level = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    shown = {name.strip().rstrip("/").removesuffix(".py") for _, name in listed}
    missing = sorted(n for n in top_level if n.removesuffix(".py") not in shown)
    assert not missing, f"the README's layout block does not show {missing}"


def test_the_adapter_library_imports_torch_and_the_standard_library_only():
    for path in (PACKAGE / "adapters").rglob("*.py"):
        for module, _ in _imports(path):
            top = module.split(".")[0]
            assert top in {"torch", "masm_lightning", ""} or top in sys.stdlib_module_names, (
                f"{path.name} imports {module}: the adapters are vendorable with torch alone"
            )
