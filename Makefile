# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO   := demo
# torch/torchvision: the CPU machines this project is built on carry these wheels locally; see docs/CONTRIBUTING.md.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow bench ablation lint browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q $(TORCH) 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import herbarium2field, torch, timm, lightning"
	rm -f $(VENV)/.installed-* && touch $@

# Headless Chromium for the web-page test (Debian's package; tests skip with a reason when it is absent).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	   apt-get install -y -q chromium >/dev/null 2>&1)) || echo "note: chromium not installed; browser tests will skip"; }

# The main job on the built-in synthetic dataset (20 species in genera of 2): data -> checks -> softmax vs
# ArcFace vs the recommended recipe (frozen features + logistic regression + genus sharing) -> evaluation ->
# t-SNE -> comparison -> report -> identification of one photo. The data and the three runs are the ablation's
# synth20g benchmark (softmax, arcface and recommended cells), so the demo reproduces its numbers.
demo: $(STAMP)
	rm -rf $(DEMO)/runs $(DEMO)/tsne $(DEMO)/comparison
	$(BIN)/h2f synth $(DEMO)/data --species 20 --seed 2 --size 160 --test-per-species 10 --genus-size 2
	$(BIN)/h2f validate $(DEMO)/data
	$(BIN)/h2f stats $(DEMO)/data --out $(DEMO)/stats
	for run in demo_softmax demo_arcface demo_recommended; do \
	  H2F_RUNS=$(DEMO)/runs $(BIN)/h2f train configs/$$run.yaml --data $(DEMO)/data && \
	  $(BIN)/h2f evaluate $(DEMO)/runs/$$run --split test --n-boot 200 || exit 1; \
	done
	$(BIN)/h2f tsne $(DEMO)/runs/demo_softmax $(DEMO)/runs/demo_arcface --out $(DEMO)/tsne
	$(BIN)/h2f compare $(DEMO)/runs/demo_softmax $(DEMO)/runs/demo_arcface $(DEMO)/runs/demo_recommended \
	  --out $(DEMO)/comparison
	$(BIN)/h2f index $(DEMO)/runs/demo_recommended
	$(BIN)/h2f report $(DEMO)/runs/demo_recommended --no-tsne
	$(BIN)/h2f identify $(DEMO)/runs/demo_recommended $$(head -n 1 $(DEMO)/data/list/test.txt | sed 's|^|$(DEMO)/data/|')
	@echo "comparison: $(DEMO)/comparison/comparison.md   t-SNE: $(DEMO)/tsne   report: $(DEMO)/runs/demo_recommended/report.html"

# The suite minus the tests marked slow (each slow path also runs here at a tiny size), with coverage: the
# per-module table goes to the log and the total must stay above [tool.coverage.report] fail_under. With CI
# set (.ci/run), a test skipped for a missing browser, shared data or optional package fails (tests/conftest.py).
# The log lists the 25 slowest tests, to keep the suite within ~10 minutes on 2 cores.
test: $(STAMP) browser
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow" --durations=25 \
	  --cov=herbarium2field --cov-report=term-missing:skip-covered

# The long tests: full-size versions of the paths the fast suite runs small, and every `h2f` command of
# tests/test_cli.py as a real subprocess.
test-slow: $(STAMP) browser
	$(BIN)/python -m pytest -q -m slow --durations=25

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# Every ingredient on/off on every benchmark (hours on a 2-core CPU; resumes where it stopped).
ablation: $(STAMP)
	$(BIN)/h2f ablate benchmarks/ablation.yaml

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(DEMO) runs .pytest_cache

# One prepared GPU check (<= 8 min on one GPU): writes benchmarks/results/gpu_check.json. Without a GPU: a
# tiny dry run on the CPU that says so and exits 0 (writes gpu_check_dry_run.json).
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py
