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

.PHONY: setup system-deps python-env demo test bench clean bridge bridge-flags mskf-columns kernel bench-online

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

demo: setup kernel bridge
	$(VENV)/bin/mlcu generate --config configs/generate.yaml --out $(DATA)
	$(VENV)/bin/mlcu prepare --config configs/prepare.yaml --input '$(DATA)/*/wrfout_d01_*' \
	  --out $(STORE) --overwrite
	rm -rf $(RUN) $(REPORT)
	$(VENV)/bin/mlcu train --config configs/train.yaml --store $(STORE) --out $(RUN) \
	  --set epochs=4 --set learning_rate=3e-3 --set model.hidden=32 --set model.column_hidden=32
	$(VENV)/bin/mlcu export --run $(RUN) --out $(RUN)/model.onnx
	$(VENV)/bin/mlcu evaluate --model $(RUN)/model.onnx --store $(STORE) --split validation --out $(REPORT)
	@echo "coupled step: the Fortran module on 2 MPI ranks, through the C shim and the runtime"
	$(MPIRUN) -np 2 fortran_bridge/build/mini_driver --model $(RUN)/model.onnx \
	  --input "$$(ls $(DATA)/*/wrfout_d01_* | tail -n 1)" --hold-from-file --out $(REPORT)/coupled_step.nc

# The Fortran bridge (fortran_bridge/Makefile): library for WRF, Python extension, mini-driver.
BRIDGE = $(MAKE) --no-print-directory -C fortran_bridge PY=$(abspath $(PY))
# OpenMPI refuses to start as root unless told; the demo runs as root in the container, where
# cross-memory attach is not allowed (so shared-memory transfers take the copy path).
MPIRUN = OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
         OMPI_MCA_btl_vader_single_copy_mechanism=none OMP_NUM_THREADS=1 mpirun

bridge: setup kernel
	$(BRIDGE)

# The convection kernel (emulator/kernel/: MSKF's trigger, updraft, downdraft and initial
# tendencies, written for this project), the model's updraft features, as a Python
# extension in emulator/.
kernel: setup
	$(MAKE) --no-print-directory -C emulator PY=$(abspath $(PY))

# WRF's own MSKF as a standalone program for `mlcu augment` (needs a WRF source tree; nothing
# of it is copied here): make mskf-columns WRF_SRC=/path/to/WRF
mskf-columns:
	$(MAKE) --no-print-directory -C training/mskf_columns WRF_SRC=$(abspath $(WRF_SRC))

# The lines a WRF configure.wrf needs to link the bridge (after make bridge).
bridge-flags:
	@$(BRIDGE) -s flags

test: setup kernel bridge
	$(PY) -m pytest -q tests bench/online

bench: setup kernel bridge
	$(PY) bench/bench_generate.py
	$(PY) bench/bench_prepare.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_bridge.py
	$(PY) bench/bench_kernel.py

# The emulator inside WRF against MSKF (bench/online/README.md), for example
# make bench-online ARGS='--quick --model data/run/model.onnx'
bench-online: setup kernel bridge
	bench/online/run $(ARGS)

clean:
	rm -rf $(DATA) $(STORE) $(RUN) $(REPORT) .pytest_cache fortran_bridge/build training/mskf_columns/build \
	  emulator/build emulator/_kernel*.so
