#!/usr/bin/env bash
# Regenerate testbed/gomod/go.mod for another Kubernetes or etcd version.
#
# k8s.io/kubernetes requires each of its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# v0.0.0 and resolves them through replace directives into its own tree. A module that requires
# k8s.io/kubernetes must repeat those replaces, pointing each at the published v0.<minor>.<patch>.
# The list comes from that version's own go.mod, so it is right for whatever version is chosen.
set -euo pipefail
k8s=${1:?usage: gen_gomod.sh v1.36.3 v3.6.16}
etcd=${2:?usage: gen_gomod.sh v1.36.3 v3.6.16}
staging="v0.${k8s#v1.}"
cd "$(dirname "$0")/gomod"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
modfile=$(go mod download -json "k8s.io/kubernetes@$k8s" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
{
  sed -n '1,/^go /p' go.mod
  echo
  echo "replace ("
  grep -oE '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$modfile" | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}' | sort -u
  echo ")"
} > go.mod.new
mv go.mod.new go.mod
rm -f go.sum
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$k8s" "k8s.io/kubernetes/cmd/kubectl@$k8s" "go.etcd.io/etcd/server/v3@$etcd"
echo "now set KUBERNETES_VERSION and ETCD_VERSION in testbed/controlplane.py"
