# Set-up commands that work on a fresh machine (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Never reach for a model hub at run time: a lookup fails fast instead of hanging.
export HF_HUB_OFFLINE := 1

.PHONY: install install-dev assets render-deps browser-deps rig-deps render-check check test test-app test-all demo clean

# constraints.txt pins the exact tested package set (pyproject.toml only states compatible ranges).
# Two stamps: the package alone (what `make demo` needs), and the package with the test, app and
# check tools (what `make test` / `make check` need), so a user who only runs the demo gets no test tools.
$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/pip install -q -c constraints.txt -e ".[test,app,check]"
	touch $@

install: render-deps $(BIN)/.installed assets

install-dev: render-deps $(BIN)/.installed-dev assets

# MediaPipe's person and hand networks (Apache-2.0) come from pinned npm packages, fetched by npm's
# own client and checked against pinned hashes (docs/mediapipe.md). A no-op when they are already in
# the cache and valid, so `install` (and with it `test`, `demo`) runs it every time.
assets: $(BIN)/.installed
	$(BIN)/python -m fastmetro assets fetch

# Offscreen rendering (synthetic data, overlays) needs OpenGL through EGL. Without a GPU that is
# Mesa's llvmpipe: libEGL/libGL (glvnd) + Mesa's EGL vendor + its software DRI driver. The check
# is a cheap file lookup, so `install` runs it every time; apt only runs when something is missing.
RENDER_DEBS := libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri
render-deps:
	@LIBS="$$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null )"; \
	if echo "$$LIBS" | grep -q 'libEGL.so.1 ' && echo "$$LIBS" | grep -q 'libGL.so.1 ' \
	    && ls /usr/share/glvnd/egl_vendor.d/*mesa*.json >/dev/null 2>&1 \
	    && ls /usr/lib/*/dri/swrast_dri.so /usr/lib/dri/swrast_dri.so 2>/dev/null | grep -q .; then \
	  true; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing the offscreen renderer's libraries: $(RENDER_DEBS)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(RENDER_DEBS); \
	else \
	  echo "warning: no EGL/Mesa found and no apt-get; install the equivalents of $(RENDER_DEBS)" \
	       "(or a GPU driver with EGL) to use \`fastmetro synth\` and rendered overlays" >&2; \
	fi

# The web app's browser test drives a real headless Chromium (Debian's chromium + chromium-driver).
# A cheap lookup each time; apt only runs when one is missing. Without apt the test is skipped.
BROWSER_DEBS := chromium chromium-driver
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  true; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing the browser for the web app's test: $(BROWSER_DEBS)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(BROWSER_DEBS); \
	else \
	  echo "warning: no chromium/chromedriver and no apt-get; the web app's browser test will be skipped" >&2; \
	fi

# The rigged exporters' tests (tests/test_rig_export.py) check the files with real clients:
# Blender's importers (Debian's blender; its glTF importer needs the system's numpy) and Khronos'
# glTF validator (npm's gltf-validator, pinned, run by node), installed under the venv so `clean`
# removes it. Cheap lookups each time; apt / npm only run for what is missing. Without
# them the tests are skipped (under CI they fail instead).
GLTF_VALIDATOR := gltf-validator@2.0.0-dev.3.10
NPM_TOOLS := $(VENV)/npm
rig-deps:
	@# Only what is missing is asked of apt: a machine may already have Node.js from another
	@# source (NodeSource's nodejs bundles npm), and Debian's npm conflicts with that nodejs.
	@MISSING=""; \
	command -v blender >/dev/null 2>&1 || MISSING="$$MISSING blender"; \
	/usr/bin/python3 -c 'import numpy' 2>/dev/null || MISSING="$$MISSING python3-numpy"; \
	command -v node >/dev/null 2>&1 || MISSING="$$MISSING nodejs"; \
	command -v npm >/dev/null 2>&1 || MISSING="$$MISSING npm"; \
	if [ -z "$$MISSING" ]; then \
	  true; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing the rigged exporters' test clients:$$MISSING"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$MISSING; \
	else \
	  echo "warning: no$$MISSING and no apt-get; the rigged exporters' client tests will be skipped" >&2; \
	fi
	@# The installed version is read from its package.json: a changed pin reinstalls.
	@if grep -qs '"version": "$(lastword $(subst @, ,$(GLTF_VALIDATOR)))"' \
	    $(NPM_TOOLS)/node_modules/gltf-validator/package.json; then \
	  true; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing $(GLTF_VALIDATOR) into $(NPM_TOOLS)"; \
	  mkdir -p $(NPM_TOOLS) && npm install --prefix $(NPM_TOOLS) --no-save --no-audit --no-fund $(GLTF_VALIDATOR); \
	else \
	  echo "warning: no npm; the glTF validator test will be skipped" >&2; \
	fi

# Prints the OpenGL renderer EGL gives us (llvmpipe on CPU-only machines).
render-check:
	$(BIN)/python -c "from fastmetro.render import create_context; c = create_context(); print(c.info['GL_RENDERER'], c.info['GL_VERSION'])"

# Lint (ruff), format check (ruff) and types (mypy): the configuration is in pyproject.toml.
check: $(BIN)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	@# Gradio writes a stub (app/ui.pyi, a copy of the module) when the app is imported; mypy would
	@# read that copy instead of the module, so the check removes it first.
	rm -f src/fastmetro/app/*.pyi
	$(BIN)/mypy

test: install-dev rig-deps
	$(BIN)/python -m pytest -q

# The web app in a real browser (marked slow: ~40 s); CI runs it after `make test`. Only this
# target installs the browser.
test-app: install-dev browser-deps
	$(BIN)/python -m pytest -q -m slow tests/test_app.py

test-all: install-dev browser-deps rig-deps
	FASTMETRO_FUZZ_PROFILE=thorough $(BIN)/python -m pytest -q -m "slow or not slow"

demo: install
	$(BIN)/python -m fastmetro demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
