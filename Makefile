# Set-up and entry points. `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo walkthrough clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	# animal silhouettes for the demo; the package declares tensorflow, which it does not need here
	$(PY) -m pip install -q --no-deps animal-mnist==0.4
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

# the quick loop: every test but those marked slow (`@pytest.mark.slow`: torchrun, real signals, long runs)
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Fashion-MNIST comes from Debian (needs root or an existing copy); emoji images from npm (`npm pack`).
$(VENV)/.demo-data-sources: $(VENV)/.installed
	@test -d /usr/share/datasets/fashion-mnist || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } || \
	  echo "could not install Debian's dataset-fashion-mnist: the demo will say what is missing"
	touch $@

demo: $(VENV)/.demo-data-sources
	$(PY) -m pomp.demo runs/demo

walkthrough: install
	bash examples/tiny_walkthrough.sh runs/walkthrough

clean:
	rm -rf runs/demo runs/walkthrough
