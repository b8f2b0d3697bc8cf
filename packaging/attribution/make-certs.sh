#!/bin/sh
# Certificates for reverserd's attribution webhook without cert-manager, for the plain
# manifests: a CA, a serving certificate for the webhook Service, the Secret holding them, and
# the CA in the ValidatingWebhookConfiguration of admission-webhook.yaml (apply that first).
# With --audit-client it also issues the client certificate the API server's audit backend
# presents (audit-client.crt/.key, for audit-webhook.kubeconfig) and the Secret with its CA.
#
# usage: make-certs.sh [--audit-client] [NAMESPACE]   (uses kubectl's current context)
set -eu
audit=""
if [ "${1:-}" = "--audit-client" ]; then audit=yes; shift; fi
namespace="${1:-reverserd}"
service=reverserd-webhook
days=3650
out="${OUT_DIR:-./reverserd-certs}"
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$days" \
  -subj "/CN=reverserd-webhook-ca" 2>/dev/null
printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s,DNS:%s\nextendedKeyUsage=serverAuth\n' \
  "$service" "$namespace" "$service" "$namespace" "$service" > serving.ext
openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr \
  -subj "/CN=$service.$namespace.svc" 2>/dev/null
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -extfile serving.ext -out tls.crt 2>/dev/null
kubectl -n "$namespace" create secret generic reverserd-webhook-tls --type=kubernetes.io/tls \
  --from-file=tls.crt --from-file=tls.key --from-file=ca.crt \
  --dry-run=client -o yaml | kubectl apply -f -
bundle="$(base64 < ca.crt | tr -d '\n')"
kubectl patch validatingwebhookconfiguration reverserd-webhook --type=json \
  -p "[{\"op\": \"add\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$bundle\"}]"
if [ -n "$audit" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout audit-ca.key -out audit-ca.crt \
    -days "$days" -subj "/CN=reverserd-audit-client-ca" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > client.ext
  openssl req -newkey rsa:2048 -nodes -keyout audit-client.key -out audit-client.csr \
    -subj "/CN=kube-apiserver-audit" 2>/dev/null
  openssl x509 -req -in audit-client.csr -CA audit-ca.crt -CAkey audit-ca.key \
    -CAcreateserial -days "$days" -extfile client.ext -out audit-client.crt 2>/dev/null
  kubectl -n "$namespace" create secret generic reverserd-audit-client-ca \
    --from-file=ca.crt=audit-ca.crt --dry-run=client -o yaml | kubectl apply -f -
fi
echo "certificates in $out; keep ca.key (and audit-ca.key) offline or delete them"
