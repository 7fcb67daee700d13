# kfn on a local kind cluster. `make kind-demo` runs every step; each step is its own target.
# Needs docker, kind, kubectl and curl; helm is fetched into .cache/bin unless HELM names another.
# Every command names the kind cluster's context, so no other cluster is ever touched.
KIND          ?= kind
KUBECTL       ?= kubectl
HELM          ?= .cache/bin/helm
KIND_CLUSTER  ?= kfn
KFN_NAMESPACE ?= kfn-system
KIND_CONTEXT  := kind-$(KIND_CLUSTER)
# The node port that hack/kind.yaml maps to localhost:8080.
KIND_GATEWAY  ?= http://localhost:8080

.PHONY: lint-chart chart-rbac kind-demo kind-create kind-images kind-load kind-install kind-apply \
        kind-curl kind-uninstall kind-delete

lint-chart: .cache/bin/helm  ## helm lint --strict the chart with default and test values
	.cache/bin/helm lint --strict charts/kfn
	.cache/bin/helm lint --strict charts/kfn -f tests/chart/values-custom.yaml

chart-rbac: $(STAMP)  ## regenerate the chart's RBAC rules from kfn_operator.rbac
	$(BIN)/python scripts/chart-rbac

kind-demo: kind-create kind-images kind-load kind-install kind-apply kind-curl  ## kind: the whole demo, cluster to curl

kind-create:  ## kind: a cluster with the gateway's node port on localhost:8080
	$(KIND) get clusters | grep -qx '$(KIND_CLUSTER)' || $(KIND) create cluster --name $(KIND_CLUSTER) --config hack/kind.yaml

kind-images: images-docker  ## kind: build the images with Docker

kind-load:  ## kind: copy the images onto the cluster's nodes
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(PLATFORM_IMAGE) $(RUNTIME_IMAGES) $(NATS_IMAGE)

kind-install: $(if $(filter .cache/bin/helm,$(HELM)),.cache/bin/helm)  ## kind: install the chart (CRD, operator, gateway)
	$(HELM) upgrade --install kfn charts/kfn --kube-context $(KIND_CONTEXT) \
	    --namespace $(KFN_NAMESPACE) --create-namespace -f hack/kind-values.yaml --wait --timeout 3m

kind-apply:  ## kind: deploy the example functions
	$(KUBECTL) --context $(KIND_CONTEXT) apply -f examples/

kind-curl:  ## kind: call the hello function through the gateway (the first call starts it from zero)
	curl -fsS --retry 30 --retry-delay 2 --retry-all-errors '$(KIND_GATEWAY)/function/hello?name=kind'
	@echo

kind-uninstall: $(if $(filter .cache/bin/helm,$(HELM)),.cache/bin/helm)  ## kind: remove the examples and the chart
	-$(KUBECTL) --context $(KIND_CONTEXT) delete -f examples/ --ignore-not-found
	$(HELM) uninstall kfn --kube-context $(KIND_CONTEXT) --namespace $(KFN_NAMESPACE)

kind-delete:  ## kind: delete the cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
