# mlcu: machine-learned cumulus scheme for WRF.
# On a fresh Debian 12 machine (as root): `make demo` runs the main job on built-in data,
# `make test` runs the tests. Both install what they need first; finished setup is skipped.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/synthetic
STORE ?= data/store
RUN ?= data/run
REPORT ?= data/report
# System packages: Fortran compiler, an MPI, netCDF-Fortran, Python headers and venv.
APT_PACKAGES := gfortran openmpi-bin libopenmpi-dev libnetcdff-dev netcdf-bin \
                python3-dev python3-venv pkg-config
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Extra pip arguments, for example a local index or a CPU-only wheel source.
PIP_ARGS ?=

.PHONY: setup system-deps python-env demo test bench clean

setup: system-deps python-env

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "system packages: present"; fi

python-env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(PIP_ARGS)
	$(PY) -m pip install -q -e '.[test]' $(PIP_ARGS)
	touch $@

demo: setup
	$(VENV)/bin/mlcu generate --config configs/generate.yaml --out $(DATA)
	$(VENV)/bin/mlcu prepare --config configs/prepare.yaml --input '$(DATA)/*/wrfout_d01_*' \
	  --out $(STORE) --overwrite
	rm -rf $(RUN) $(REPORT)
	$(VENV)/bin/mlcu train --config configs/train.yaml --store $(STORE) --out $(RUN) \
	  --set epochs=4 --set learning_rate=3e-3 --set model.hidden=32 --set model.column_hidden=32
	$(VENV)/bin/mlcu evaluate --model $(RUN) --store $(STORE) --split validation --out $(REPORT)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_prepare.py
	$(PY) bench/bench_train.py

clean:
	rm -rf $(DATA) $(STORE) $(RUN) $(REPORT) .pytest_cache
