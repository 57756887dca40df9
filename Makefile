# The README's two commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
HELM_VERSION := v3.19.0
CACHE := $(HOME)/.cache/bootstrap-token-operator
OPERATOR := target/debug/bootstrap-token-operator
CRD := crds/bootstraptokens.bootstraptoken.dev.yaml
REVOKED_CRD := crds/revokedtokens.bootstraptoken.dev.yaml
ISSUED_CRD := crds/issuedtokens.bootstraptoken.dev.yaml
CHART := charts/bootstrap-token-operator
RELEASE := bootstrap-token-operator

.PHONY: all build test run manifests control-plane kms tools image bench fmt clean

all: build

build:
	$(CARGO) build --workspace

## control-plane: etcd, kube-apiserver and kube-controller-manager built from the Go modules pinned
## in tests/control-plane/go.mod, cached under ~/.cache and linked as bin/k8s.
control-plane:
	@bash tests/control-plane/build.sh

## kms: local-kms, a KMS speaking the AWS KMS API, built from the Go module pinned in
## tests/local-kms/go.mod, cached under ~/.cache and linked as bin/local-kms (KMS signing tests).
kms:
	@bash tests/local-kms/build.sh

## tools: helm, built from its Go module at a pinned release, cached under ~/.cache, linked as bin/helm.
tools:
	@if [ ! -x "$(CACHE)/helm-$(HELM_VERSION)/helm" ]; then \
	  echo "building helm $(HELM_VERSION)"; \
	  GOBIN="$(CACHE)/helm-$(HELM_VERSION)" go install -trimpath -ldflags "-s -w" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	fi
	@mkdir -p bin && ln -sfn "$(CACHE)/helm-$(HELM_VERSION)/helm" bin/helm

## manifests: regenerate everything derived (tests fail when any of it drifts): the CRD from the
## Rust type (crds/ and the chart's copy), and from the chart the kustomize install and the RBAC
## the integration tests run the operator under.
manifests: tools
	$(CARGO) run -q --bin bootstrap-token-operator -- crd > $(CRD)
	$(CARGO) run -q --bin bootstrap-token-operator -- crd revokedtokens > $(REVOKED_CRD)
	$(CARGO) run -q --bin bootstrap-token-operator -- crd issuedtokens > $(ISSUED_CRD)
	cp $(CRD) $(REVOKED_CRD) $(ISSUED_CRD) $(CHART)/files/crds/
	bin/helm template $(RELEASE) $(CHART) --namespace $(RELEASE) > deploy/install.yaml
	bin/helm template $(RELEASE) $(CHART) --namespace $(RELEASE) --show-only templates/clusterrole.yaml > deploy/rbac/clusterrole.yaml
	bin/helm template $(RELEASE) $(CHART) --namespace $(RELEASE) --show-only templates/roles.yaml > deploy/rbac/roles.yaml
	bin/helm template $(RELEASE) $(CHART) --namespace $(RELEASE) --show-only templates/tokenreview.yaml \
	  --set config.endpoint.workloadIdentity.enabled=true > deploy/rbac/tokenreview.yaml

## image: the release image localhost/bootstrap-token-operator:dev, built offline: a static musl
## release binary on an empty base, with podman (docker when podman is absent). Unchanged binary,
## unchanged image. The image test runs it.
image:
	@bash image/build.sh

test: control-plane kms tools image
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

## run: a local control plane, the CRD, the operator and the samples; Ctrl-C stops everything.
## With KUBECONFIG pointing at a reachable cluster, that cluster is used instead.
run: control-plane
	$(CARGO) build --workspace --bins
	@if [ -n "$$KUBECONFIG" ] && kubectl version --request-timeout=5s >/dev/null 2>&1; then \
	  echo "using the cluster in KUBECONFIG=$$KUBECONFIG"; \
	  OPERATOR_KUBECONFIG="$$KUBECONFIG" bash tests/run-demo.sh; \
	else \
	  env -u KUBECONFIG target/debug/local-cluster -- bash tests/run-demo.sh; \
	fi

## bench: the operator against the local control plane, the token endpoint under wrk (signing
## locally, and through local-kms), and workload-identity exchanges (TokenReview through the local
## control plane, with and without the review cache); every result is a ratio against a baseline measured in the
## same run (benches/RESULTS.md).
bench: control-plane kms
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(CARGO) bench --bench endpoint
	$(CARGO) bench --bench introspect
	$(CARGO) bench --bench operator
	$(CARGO) bench --bench workload_identity

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf bin .local
