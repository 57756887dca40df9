#!/usr/bin/env bash
# `make run`'s story against the cluster in KUBECONFIG: CRD, operator, samples, the issued token's
# claims. The operator uses OPERATOR_KUBECONFIG (its restricted identity on the local control
# plane). Runs until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KUBECONFIG:?KUBECONFIG must point at the cluster}"
OPERATOR_KUBECONFIG=${OPERATOR_KUBECONFIG:-$KUBECONFIG}
OPERATOR_NAMESPACE=bootstrap-token-operator
DEMO_NAMESPACE=demo
mkdir -p .local

kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/bootstraptokens.bootstraptoken.dev --timeout=60s >/dev/null
for ns in "$OPERATOR_NAMESPACE" "$DEMO_NAMESPACE"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done

KUBECONFIG=$OPERATOR_KUBECONFIG target/debug/bootstrap-token-operator run \
  --config deploy/samples/config.yaml --namespace "$OPERATOR_NAMESPACE" > .local/operator.log 2>&1 &
operator=$!
trap 'kill -TERM $operator 2>/dev/null; wait $operator 2>/dev/null; exit 0' INT TERM EXIT

for sample in deploy/samples/bootstraptoken.yaml deploy/samples/deployment.yaml; do
  [ -f "$sample" ] && kubectl -n "$DEMO_NAMESPACE" apply -f "$sample" >/dev/null
done
if ! kubectl -n "$DEMO_NAMESPACE" wait --for=condition=Ready bt/petstore --timeout=60s >/dev/null; then
  echo "the sample BootstrapToken did not become Ready; operator log:" >&2
  tail -n 40 .local/operator.log >&2
  exit 1
fi

secret=$(kubectl -n "$DEMO_NAMESPACE" get bt petstore -o jsonpath='{.status.secretName}')
token=$(kubectl -n "$DEMO_NAMESPACE" get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)
echo
echo "BootstrapToken $DEMO_NAMESPACE/petstore is Ready; Secret $secret holds a token with these claims:"
python3 - "$token" <<'PY'
import base64, json, sys
payload = sys.argv[1].split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))), indent=2))
PY
cat <<MSG

ready. Look around with:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n $DEMO_NAMESPACE get bt,secret
  kubectl -n $DEMO_NAMESPACE describe bt petstore
operator log: .local/operator.log — Ctrl-C stops everything.
MSG
wait $operator
