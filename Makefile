# `make test` sets up everything on a fresh Debian 12 machine (apt packages, a venv with vfalloc
# and its test extras) and runs the test suite. `make bench` runs the benchmarks.
VENV   := $(CURDIR)/.venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: test unit e2e setup bench clean lint deb deb-compat

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' vfalloc/__init__.py)
DEB     := $(CURDIR)/dist/vfalloc_$(VERSION)_all.deb

# The lint gate, the unit and hook layer, the libvirt layer, then the end-to-end run on the
# emulated SR-IOV host, which installs the Debian package built once here (deb) with dpkg; at the
# end, the time each layer took (tools/test-layers, which puts what each run writes outside the
# checkout under a root that is new for that run: docs/testing.md, "A new root for every run").
test: setup lint deb
	VFALLOC_DEB=$(DEB) VFALLOC_E2E_DEB=$(DEB) tools/test-layers $(PY)

# ruff (pyflakes, bugbear, pyupgrade, import order) and mypy, both configured in pyproject.toml;
# sh -n and shellcheck on the hook file and the Debian maintainer scripts (tools/lint-shell).
lint: setup
	$(VENV)/bin/ruff check vfalloc tests bench demo
	$(VENV)/bin/mypy
	tools/lint-shell $(PY)

e2e: setup deb
	VFALLOC_E2E_DEB=$(DEB) tests/e2e/run

# vfalloc_VERSION_all.deb from debian/ (debhelper, dh-python/pybuild), built on a copy of the checkout.
deb:
	tools/build-deb $(DEB)

# The unit and libvirt layers on Debian 12's python3 over Debian's python3-lxml, python3-filelock
# and python3-libvirt (the versions the package depends on), test tools from pip.
COMPAT_VENV := $(CURDIR)/.deb-compat-venv
deb-compat: setup
	rm -rf $(COMPAT_VENV)
	/usr/bin/python3 -m venv --system-site-packages $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --no-deps -e .
	$(COMPAT_VENV)/bin/python -m pip install -q pytest hypothesis prometheus_client
	$(COMPAT_VENV)/bin/python tools/debian-libs
	$(COMPAT_VENV)/bin/python -m pytest tests --ignore=tests/e2e

# vfalloc on a machine without SR-IOV hardware: boots the emulated SR-IOV host of the e2e tests
# and narrates a short session in it, printing the commands and their real output.
.PHONY: demo
demo: setup
	$(PY) demo/demo.py

unit: setup
	$(PYTEST) tests --ignore=tests/e2e -m "not libvirt"

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml tools/setup-debian
	@if [ "$$(id -u)" = 0 ]; then ./tools/setup-debian; \
	 else echo "make: not root, skipping apt packages (run tools/setup-debian as root once)"; fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

# Benchmarks run vfalloc as users install it (a regular, not an editable, install).
BENCH_VENV := $(CURDIR)/.bench-venv
bench: setup
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --force-reinstall --no-deps .
	$(BENCH_VENV)/bin/python -m pip install -q lxml filelock
	cd /tmp && $(BENCH_VENV)/bin/python $(CURDIR)/bench/run.py $(BENCH_FLAGS)

# The same, and VM starts on the emulated SR-IOV host of the e2e tests (boots it: minutes; needs
# root). Inside it vfalloc runs from the project's venv, as the e2e tests run it.
.PHONY: bench-host
bench-host: BENCH_FLAGS += --host
bench-host: bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(COMPAT_VENV) build dist *.egg-info
