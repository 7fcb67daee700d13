# The real-cluster tier: kfn's images, chart, operator and gateway on a real single-node Kubernetes
# (../shared/realk8s, or KFN_REALK8S). Skipped with one line where there is none.
#   make test-cluster    start the cluster (if down), load the images `make images` built, pytest tests/cluster
#   make bench-cluster   cold starts on that cluster: a bare runtime pod vs a function through kfn's gateway;
#                        async throughput there: events accepted/s through the NodePort, deliveries/s
#   make bench-cluster-scale  the control plane with 100, 300 and 1,000 Functions applied at once (~15 min;
#                        SCALE_ARGS='--sizes 100,1000')
# PYTEST_ARGS passes arguments to pytest, e.g. make test-cluster PYTEST_ARGS='-k scale -x'.
PYTEST_ARGS ?=

.PHONY: test-cluster bench-cluster bench-cluster-scale

test-cluster: $(STAMP) .cache/bin/helm  ## the real-cluster tier (needs make images first; stops the cluster if it started it)
	scripts/test-cluster $(PYTEST_ARGS)

bench-cluster: $(STAMP) .cache/bin/helm  ## cold starts and async throughput on the real cluster (prints tables)
	scripts/test-cluster --bench

SCALE_ARGS ?=
bench-cluster-scale: $(STAMP) .cache/bin/helm  ## the control plane with 100, 300 and 1,000 Functions on the real cluster (prints a table)
	scripts/test-cluster --bench-scale $(SCALE_ARGS)
