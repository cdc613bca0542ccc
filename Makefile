# LUMEN Factory - the front door. `make help` lists the targets.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# mmcv 2.1.0 has no wheel for torch 2.13: it is built once from source (about 15 min on 2 cores)
# into this folder and reinstalled from it afterwards.
WHEELHOUSE ?= $(HOME)/.cache/lumen-factory/wheels
CONSTRAINTS := $(VENV)/constraints.txt
OUT ?= outputs

.PHONY: help setup test test-fast lint typecheck format demo paper foundation ship-judges city layouts contact-sheet controlnet judges compare \
        generate dg multitask-bench train-segformer train-multitask bench \
        cluster-up cluster-down cluster-submit clean

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

setup:  ## create .venv and install everything (torch 2.13, the project, mmcv with ops, mmseg)
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned; the constraint keeps every later install from replacing it.
	$(PIP) install -q torch==2.13.0
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	$(MAKE) mmcv
	$(PIP) install -q -c $(CONSTRAINTS) "mmsegmentation==1.2.2" ftfy regex "albumentations>=2.0,<2.1"
	$(PY) -c "import mmseg, mmcv.ops, factory, downstream; print('setup ok: mmseg', mmseg.__version__)"

.PHONY: mmcv
mmcv:  ## build mmcv 2.1.0 with ops once (cached in WHEELHOUSE), then install it
	@if $(PY) -c "import mmcv, mmcv.ops" 2>/dev/null; then echo "mmcv with ops already installed"; exit 0; fi; \
	set -e; mkdir -p $(WHEELHOUSE); \
	if ! ls $(WHEELHOUSE)/mmcv-2.1.0-*.whl >/dev/null 2>&1; then \
	  echo "building mmcv 2.1.0 with ops from source (once; ~15 min on 2 cores)"; \
	  $(PIP) install -q -c $(CONSTRAINTS) "setuptools<70" wheel ninja; \
	  MMCV_WITH_OPS=1 MAX_JOBS=$${MAX_JOBS:-2} $(PIP) wheel --no-deps --no-build-isolation \
	    -c $(CONSTRAINTS) -w $(WHEELHOUSE) mmcv==2.1.0; \
	  $(PIP) install -q -c $(CONSTRAINTS) "setuptools>=77"; \
	fi; \
	$(PIP) install -q -c $(CONSTRAINTS) $(WHEELHOUSE)/mmcv-2.1.0-*.whl

test:  ## run the whole test suite (slow end-to-end tests included)
	$(PY) -m pytest -q tests

test-fast:  ## the fast tests only
	$(PY) -m pytest -q -m "not slow" tests

lint:  ## ruff lint + format check + mypy (settings in pyproject.toml)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy factory downstream demo

typecheck:  ## mypy on factory, downstream and demo (also run by lint)
	$(PY) -m mypy factory downstream demo

format:  ## ruff format + autofix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The offline foundation model shipped in models/ (stands in for SD 1.5): retrain it from scratch
# with its recipe (resumable: rerun after a kill), then ship it (recipe, loss curve, hashes).
FOUNDATION := procedural-base-v1
foundation:  ## retrain the shipped foundation model (models/$(FOUNDATION); ~60 min on 2 cores, resumable)
	$(PY) -m factory.train.base --config configs/train/procedural_foundation.yaml out=$(OUT)/foundation/$(FOUNDATION)
	$(PY) -m factory.train.ship $(OUT)/foundation/$(FOUNDATION) models/$(FOUNDATION) \
		--command "make foundation" --commit "$$(git rev-parse --short HEAD)"

# The comparison's offline judges, shipped beside it (the demo uses them unless --from-scratch).
JUDGES := procedural-judges-v1
ship-judges: judges  ## retrain the shipped judges (models/$(JUDGES); ~1.5 min on 2 cores) and ship them
	$(PY) -m factory.train.ship --judges outputs/judges models/$(JUDGES) \
		--command "make ship-judges" --commit "$$(git rev-parse --short HEAD)"

# ---- the procedural chain, stage by stage (README "Commands, stage by stage") -------------------
# Each target runs one public command with its shipped config; its outputs (outputs/<stage>/...)
# are the next target's inputs, in this order:
#   make city layouts contact-sheet controlnet judges compare generate train-segformer train-multitask dg
# ARGS: more flags / key=value overrides for the command, e.g. make controlnet ARGS='steps=50'.
# tests/test_chain.py runs the README's commands in this order and checks these targets run them.
ARGS ?=
CONDITION ?= layout
COMPARE ?= layout canny
LUMEN_SHARDS := outputs/generate/procedural/shards

city:  ## 1. the procedural city (Cityscapes + ACDC layouts, 64x128) -> data/procedural
	$(PY) -m factory.data.procedural --out data/procedural $(ARGS)

layouts:  ## 2. neural layouts with the shipped foundation model: PCA + stored layouts -> outputs/layouts/procedural
	$(PY) -m factory.jobs.extract_layouts --config configs/extract/procedural.yaml $(ARGS)

contact-sheet:  ## 3. picture: image, neural layout, Canny, semseg per row -> outputs/contact_sheet/layouts.png
	$(PY) -m factory.layout.contact_sheet --city data/procedural --model models/procedural-base-v1 --pca outputs/layouts/procedural/pca --out outputs/contact_sheet/layouts.png $(ARGS)

controlnet:  ## 4. a ControlNet: CONDITION=layout (LUMEN, label-free; default), canny, semseg or disparity
	$(PY) -m factory.train.controlnet --config configs/train/procedural_controlnet_$(CONDITION).yaml $(ARGS)

judges:  ## 5. the offline judges of the comparison (segmenter, depth, weather) -> outputs/judges/
	$(PY) -m factory.quality.segmenter --out outputs/judges/segmenter $(ARGS)
	$(PY) -m factory.eval.depth --out outputs/judges/depth $(ARGS)
	$(PY) -m factory.eval.controllability --out outputs/judges/weather $(ARGS)

compare:  ## 6. Table 2 over the ControlNets named in COMPARE (default: layout canny) -> outputs/compare
	$(PY) -m factory.eval.compare $(foreach c,$(COMPARE),--controlnet $(c)=outputs/controlnet/procedural_$(c)) --data data/procedural/cityscapes --out outputs/compare $(ARGS)

generate:  ## 7. weather variants with the LUMEN ControlNet (Ray job) -> outputs/generate/procedural
	$(PY) -m factory.jobs.generate --config configs/generate/procedural.yaml $(ARGS)

dg:  ## 10. the domain-generalisation benchmark (real vs real + LUMEN, clear -> ACDC) -> outputs/benchmarks/dg
	$(PY) -m downstream.benchmarks.dg --lumen '$(LUMEN_SHARDS)/*.tar' $(ARGS)

multitask-bench:  ## 11. the multi-task benchmark (real / LUMEN / real + LUMEN) -> outputs/benchmarks/multitask
	$(PY) -m downstream.benchmarks.multitask --lumen $(LUMEN_SHARDS) $(ARGS)

# CITY_SEED=<n>: the same run on a procedural city drawn with another seed (all else unchanged).
CITY_SEED ?=
demo:  ## the whole paper in miniature, offline, on a CPU (<= 15 min) [CITY_SEED=<n>]
	$(PY) -m demo --out $(OUT)/demo$(if $(CITY_SEED),-city$(CITY_SEED)) $(if $(CITY_SEED),city_seed=$(CITY_SEED))

paper:  ## the powered comparisons (DG with baselines, multi-task, Table 2), paired-seed intervals (<= 60 min) [CITY_SEED=<n>]
	$(PY) -m demo --config configs/paper.yaml --out $(OUT)/paper$(if $(CITY_SEED),-city$(CITY_SEED)) $(if $(CITY_SEED),city_seed=$(CITY_SEED))

bench:  ## CPU benchmarks (tiny models): layout extraction, generation job vs model-only loop
	$(PY) bench/bench_layout.py
	$(PY) bench/bench_generate.py --refs 48 --write-docs

# ---- local Ray cluster (issues 5, 13) ---------------------------------------------------------
# Ray 2.60 turns token authentication on for clusters it starts. We pin it explicitly: the
# token lives in $(CLUSTER_DIR)/auth_token and RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH are exported to
# `ray start` (head + job driver inherit them) and to `ray job submit` (sends it as a header).
# The head listens on 127.0.0.1 only: Ray rewrites --node-ip-address=127.0.0.1 to the machine's
# routable address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 declares a one-machine Ray; with
# the node address on loopback, GCS, raylet, object manager, agents, the metrics servers and
# the workers all bind 127.0.0.1 (other machines cannot join such a cluster: use cluster/ray-up.yaml).
# cluster/local_head.py runs `ray start --head --block` as one process it records in
# $(CLUSTER_DIR)/head.json, so cluster-down stops this head and what it started, never another
# Ray on the machine (`ray stop` would stop them all). RAY_START_ARGS: more `ray start` flags
# (e.g. --ray-client-server-port=..., --dashboard-agent-listen-port=... to run two side by side).
CLUSTER_DIR ?= $(OUT)/cluster
RAY_PORT ?= 6390
RAY_DASHBOARD_PORT ?= 8275
RAY_NUM_CPUS ?= 2
RAY_TEMP_DIR ?= /tmp/lumen-ray-$(RAY_PORT)
RAY_START_ARGS ?=
RAY_ENV = RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(abspath $(CLUSTER_DIR))/auth_token \
	PATH=$(abspath $(VENV))/bin:$$PATH RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
GENERATE_CONFIG ?= configs/generate/procedural.yaml

cluster-up:  ## start a local Ray head on 127.0.0.1 (token auth) for `make cluster-submit`
	mkdir -p $(CLUSTER_DIR)
	test -s $(CLUSTER_DIR)/auth_token || $(PY) -c "import secrets; print(secrets.token_hex(32))" > $(CLUSTER_DIR)/auth_token
	chmod 600 $(CLUSTER_DIR)/auth_token
	$(RAY_ENV) $(PY) cluster/local_head.py up $(CLUSTER_DIR) --temp-dir=$(RAY_TEMP_DIR) -- \
		--node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --port=$(RAY_PORT) \
		--dashboard-port=$(RAY_DASHBOARD_PORT) --num-cpus=$(RAY_NUM_CPUS) --include-dashboard=true \
		--disable-usage-stats $(RAY_START_ARGS)
	@# what a shell needs to submit to this head (README "ray job submit" recipe): `source` it
	@printf '%s\n' '# written by make cluster-up: `source` this file, then `ray job submit ...`' \
		'export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$(RAY_DASHBOARD_PORT)' \
		'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(abspath $(CLUSTER_DIR))/auth_token' \
		'export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0' \
		'export PATH=$(abspath $(VENV))/bin:$$PATH' > $(CLUSTER_DIR)/env.sh
	@echo "cluster up: source $(CLUSTER_DIR)/env.sh, then ray job submit (README), make cluster-down to stop"

cluster-submit:  ## submit the generation job (make generate's, with the ControlNet of make controlnet) to the local cluster
	test -d data/procedural/cityscapes || $(MAKE) city
	$(RAY_ENV) $(VENV)/bin/ray job submit --address=http://127.0.0.1:$(RAY_DASHBOARD_PORT) \
		--working-dir . --runtime-env cluster/runtime_env.yaml -- \
		python -m factory.jobs.generate --config $(GENERATE_CONFIG) \
		out=$(abspath $(OUT))/generate/procedural dataset.root=$(abspath data/procedural/cityscapes) \
		synth.controlnet=$(abspath outputs/controlnet/procedural_layout) $(ARGS)

cluster-down:  ## stop the Ray head cluster-up started (and only it)
	$(PY) cluster/local_head.py down $(CLUSTER_DIR)

clean:  ## remove generated outputs (keeps .venv)
	rm -rf $(OUT) data runs work_dirs

# Downstream SegFormer (mmsegmentation). CONFIG: an mmseg config; SYNTH: a shard glob mixed into
# training so that a fraction RATIO of the samples comes from it. GPU when visible, else CPU.
# 8. `make train-segformer SYNTH='outputs/generate/procedural/shards/*.tar'` is the chain's step.
train-segformer: CONFIG ?= configs/downstream/segformer_tiny_procedural-64x128.py
train-segformer: RATIO ?= 0.5
train-segformer:  ## 8. SegFormer: CONFIG=<mmseg config> [SYNTH='<shard glob>' RATIO=0.5] [TRAIN_ARGS=...]
	$(PY) -m downstream.segformer.train $(CONFIG) $(if $(SYNTH),--synth '$(SYNTH)' --ratio $(RATIO)) $(TRAIN_ARGS) $(ARGS)

# Multi-task network (semantics + depth + 3D vehicle boxes, one MiT encoder). CONFIG: a YAML of
# downstream.multitask.train; SYNTH: a folder of variant shards (they carry the references'
# disparity, camera and gtBbox3d) mixed in at the config's ratio. Evaluates on the config's val.
comma := ,
train-multitask: CONFIG ?= configs/downstream/multitask_procedural.yaml
train-multitask:  ## 9. multi-task net: CONFIG=<yaml> [SYNTH=<shard folder>] [TRAIN_ARGS='--resume iters=500']
	$(PY) -m downstream.multitask.train --config $(CONFIG) $(if $(SYNTH),'synth={kind: shards$(comma) root: $(SYNTH)}') $(TRAIN_ARGS) $(ARGS)
