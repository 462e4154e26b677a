"""Which top-level modules a fresh interpreter holds after importing a module: ``python -m tests.fresh_imports
PROBE...`` prints ``{probe: {"import": [...], "attribute": [...]}}`` as JSON.

A probe is ``module`` or ``module:attribute`` (then ``"attribute"`` lists the modules held after reading that
attribute of the imported module too). One interpreter serves every probe: it imports torch — which every module of
the package needs and none of the probes asks about — then forks a child per probe, so each probe starts from the
same bare state and pays only its own imports. A probe whose import fails reports the error instead.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import traceback


def _loaded() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules})


def _probe(probe: str) -> dict[str, object]:
    module_name, _, attribute = probe.partition(":")
    module = importlib.import_module(module_name)
    found: dict[str, object] = {"import": _loaded()}
    if attribute:
        getattr(module, attribute)
        found["attribute"] = _loaded()
    return found


def main(probes: list[str]) -> dict[str, object]:
    import torch  # noqa: F401  (shared by every child; see the module docstring)

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as folder:
        for i, probe in enumerate(probes):
            out = os.path.join(folder, f"{i}.json")
            pid = os.fork()
            if pid == 0:  # the child: one probe, then leave without running the parent's clean-up
                try:
                    found = _probe(probe)
                except BaseException:
                    found = {"error": traceback.format_exc()}
                with open(out, "w") as f:
                    json.dump(found, f)
                os._exit(0)
            os.waitpid(pid, 0)
            try:
                with open(out) as f:
                    results[probe] = json.load(f)
            except FileNotFoundError:
                results[probe] = {"error": "the probe's process died before reporting"}
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
