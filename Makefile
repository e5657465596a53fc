# Two commands a user needs: `make demo` (the main job end to end) and `make test`; `make cluster-demo`
# runs the demo flow on a local cluster. All run setup first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo cluster-demo serve-demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m sim.local.demo

# The demo flow on a local cluster (S3 server, Spark master + 2 workers, MLflow server), small data.
cluster-demo: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m sim.local.cluster_demo $(CLUSTER_DEMO_ARGS)

# Online scoring on the demo's lakehouse, after `make demo`: export the UBT snapshot, start the store (Redis
# where setup provided it) and the scoring service, score the test day over HTTP, print the consistency
# result and the latency table, stop what it started.
serve-demo: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m sim.local.serve_demo $(SERVE_DEMO_ARGS)

# Test files run on TEST_WORKERS pytest-xdist processes (a file stays on one worker: module fixtures).
TEST_WORKERS ?= 2
test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The inner loop: every test not marked slow (no spark-submit, cluster, S3/MLflow server or multi-process
# training run); `make test` runs them all.
test-fast: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# Every benchmark, then one table of the JSON line each ends with (logs in bench_out/). QUICK=1: each
# benchmark's --quick (small sizes: a smoke run, not the figures of docs/RESULTS.md); BENCHES="bench_train
# bench_loader": only those.
bench: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/summary.py --run $(if $(QUICK),--quick) $(if $(BENCHES),--only $(BENCHES))

clean:
	rm -rf bench_out lakehouse lakehouse_ml-100k mlruns mlflow.db results_*.db spark-warehouse metastore_db derby.log
