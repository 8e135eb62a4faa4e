# What the Fortran/C sub-builds share (included by emulator/Makefile and fortran_bridge/Makefile,
# called from the top-level Makefile with PY, the project's venv Python, as an absolute path):
# the compilers and where the Python, numpy and f2py headers are.

SHELL := /bin/bash
PY ?= $(abspath ../.venv/bin/python)
# make's built-in defaults (f77, cc) are not what we want unless set on purpose.
ifeq ($(origin FC),default)
FC := gfortran
endif
ifeq ($(origin CC),default)
CC := gcc
endif
B := build
pyvar = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("$(1)") or "")')
EXT_SUFFIX = $(call pyvar,EXT_SUFFIX)
NUMPY_INC = $(shell $(PY) -c 'import numpy; print(numpy.get_include())')
F2PY_INC = $(shell $(PY) -c 'import numpy.f2py; print(numpy.f2py.get_include())')
