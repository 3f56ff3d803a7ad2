# FlexCal: every target builds/refreshes its own environment in .venv (nothing by hand).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.flexcal-installed
JS_DIR  := $(VENV)/share/flexcal/3dmol
JS      := $(JS_DIR)/package/build/3Dmol-min.js
APP_JS  := app/static/3Dmol-min.js
PORT    ?= 8501
LAB_PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: app test venv js clean benchmarks lab

venv: $(STAMP) $(JS) $(APP_JS)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 (CPU) is pinned in pyproject and comes from the local wheel cache
	$(BIN)/python -m pip install -q -e '.[reference,test,chgnet,distributed,chemiscope]'
	touch $(STAMP)

# 3Dmol.js for the offline 3D viewer, from the npm registry at set-up time (never from a CDN at run time)
$(JS):
	mkdir -p $(JS_DIR)
	cd $(JS_DIR) && npm pack --silent 3dmol@2.5.5 >/dev/null && tar xzf 3dmol-2.5.5.tgz package/build/3Dmol-min.js && rm -f 3dmol-2.5.5.tgz
	test -s $(JS)

# the app serves its own copy (Streamlit static serving: fetched once, cached by the browser)
$(APP_JS): $(JS)
	mkdir -p app/static
	cp -p $(JS) $(APP_JS).tmp && mv $(APP_JS).tmp $(APP_JS)

app: venv
	$(BIN)/python -m app.launch --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# JupyterLab on the notebooks with the project's kernel (offline: everything comes from the package registry)
lab: venv
	$(BIN)/python -m pip install -q -e '.[lab]'
	$(BIN)/python -m ipykernel install --sys-prefix --name flexcal --display-name "FlexCal (.venv)" >/dev/null
	cd notebooks && ../$(BIN)/jupyter lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# each writes its table to benchmarks/results/ (summarised in BENCHMARKS.md); minutes each on 2 cores
BENCHES ?= bench_calibration bench_featurize bench_calculator bench_active bench_demo_studies bench_public_dft bench_app
benchmarks: venv
	for b in $(BENCHES); do $(BIN)/python -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .flexcal_cache
