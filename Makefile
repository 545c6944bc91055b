# Shortcuts. Data comes from $REPRO_DATA_MIRROR (a folder with cifar10/, sst5/, ...), else the
# official sources are downloaded.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
MLFLOW_PORT ?= 5000

.PHONY: setup repro test test-all smoke ui report bench

setup:  ## install torch (CPU machines here: the on-disk 2.14.1 build), the project and test tools
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[test]"
	@test -f /usr/share/wordnet/data.noun || echo "note: WordNet 3.0 (synonym baseline) is missing: apt-get install wordnet-base wordnet-sense-index"

repro:  ## the main job: every stage of dvc.yaml on base.profile (finished runs are skipped)
	dvc repro

test:   ## the CI test suite (everything not marked slow)
	$(PYTHON) -m pytest -q

test-all:
	$(PYTHON) -m pytest -q -m ""

smoke:  ## the whole pipeline on the smoke profile, in seconds per run
	repro run --profile smoke && repro report --profile smoke

report:
	repro report

bench:
	repro bench

ui:     ## browse runs and table summaries (MLflow 3 opens in its GenAI view: the printed link opens the runs)
	@echo "runs: http://127.0.0.1:$(MLFLOW_PORT)/#/experiments?workflowType=machine_learning"
	mlflow ui --backend-store-uri sqlite:///mlflow.db --port $(MLFLOW_PORT)
