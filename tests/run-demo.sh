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

ENDPOINT=http://127.0.0.1:6882
KUBECONFIG=$OPERATOR_KUBECONFIG target/debug/bootstrap-token-operator run \
  --config deploy/samples/config.yaml --namespace "$OPERATOR_NAMESPACE" \
  --endpoint-addr 127.0.0.1:6882 --admin-addr 127.0.0.1:8080 > .local/operator.log 2>&1 &
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
claims() {
  python3 -c 'import base64, json, sys
token = sys.argv[1] if len(sys.argv) > 1 else json.load(sys.stdin)["access_token"]
payload = token.split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))), indent=2))' "$@"
}
claims "$token"
if [ -f deploy/samples/deployment.yaml ]; then
  deployment=$(kubectl -n "$DEMO_NAMESPACE" get -f deploy/samples/deployment.yaml -o jsonpath='{.metadata.name}')
  if kubectl -n "$DEMO_NAMESPACE" wait --for=condition=Ready "bt/$deployment" --timeout=60s >/dev/null; then
    echo
    echo "Deployment $DEMO_NAMESPACE/$deployment (annotated) got BootstrapToken $deployment; its token's claims:"
    claims "$(kubectl -n "$DEMO_NAMESPACE" get secret "$(kubectl -n "$DEMO_NAMESPACE" get bt "$deployment" -o jsonpath='{.status.secretName}')" -o jsonpath='{.data.token}' | base64 -d)"
  fi
fi

# The token endpoint, with the demo clients of deploy/samples/config.yaml.
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:8080/readyz && break; sleep 0.1; done
echo
echo "\$ curl -u f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA -d grant_type=client_credentials $ENDPOINT/oauth2/token"
response=$(curl -fsS -u f7d42348-c647-4efb-a52d-4c5787421e72:f6h1FTI8Q3-7UScPZDzfXA -d grant_type=client_credentials "$ENDPOINT/oauth2/token")
echo "$response" | python3 -m json.tool
echo "$response" | claims
echo
echo "\$ curl -u f7d42348-c647-4efb-a52d-4c5787421e00:f6h1FTI8Q3-7UScPZDzfXA -H 'Transfer-Encoding: chunked' -d grant_type=bootstrap_token -d sid=com.networknt.petstore-1.0.0 $ENDPOINT/oauth2/token"
curl -fsS -u f7d42348-c647-4efb-a52d-4c5787421e00:f6h1FTI8Q3-7UScPZDzfXA -H 'Transfer-Encoding: chunked' \
  -d grant_type=bootstrap_token -d sid=com.networknt.petstore-1.0.0 "$ENDPOINT/oauth2/token" | claims
echo
echo "\$ curl $ENDPOINT/oauth2/keys"
curl -fsS "$ENDPOINT/oauth2/keys"; echo
cat <<MSG

ready. Look around with:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n $DEMO_NAMESPACE get bt,secret
  kubectl -n $DEMO_NAMESPACE describe bt petstore
  curl -s -u <client>:<secret> -d grant_type=client_credentials $ENDPOINT/oauth2/token
  curl -s http://127.0.0.1:8080/metrics
operator log: .local/operator.log — Ctrl-C stops everything.
MSG
wait $operator
