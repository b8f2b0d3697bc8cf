{{/*
Names and labels shared by every object of the chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "reverserd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name: fullnameOverride, or the release name (with the chart name unless the
release name already contains it). */}}
{{- define "reverserd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the pods; never change them in an upgrade (the Deployment selector is
immutable). */}}
{{- define "reverserd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reverserd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "reverserd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "reverserd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: reverserd
app.kubernetes.io/managed-by: {{ (include "reverserd.oldOr" (list .Values.AsMap "labels.managedBy" .Release.Service) | fromJson).value }}
{{- end -}}

{{/* The ServiceAccount the pod runs as. */}}
{{- define "reverserd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "reverserd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The claim holding the state dir. */}}
{{- define "reverserd.claimName" -}}
{{- default (printf "%s-state" (include "reverserd.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* The Secret holding the webhook's serving certificate. */}}
{{- define "reverserd.webhookSecret" -}}
{{- if eq .Values.attribution.webhook.certificates "secret" -}}
{{- required "attribution.webhook.existingSecret is required with certificates: secret" .Values.attribution.webhook.existingSecret -}}
{{- else -}}
{{- printf "%s-webhook-tls" (include "reverserd.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the peer secret of a sharded group with attribution on. */}}
{{- define "reverserd.peerSecret" -}}
{{- .Values.sharding.peerSecret | default (printf "%s-peer" (include "reverserd.fullname" .)) -}}
{{- end -}}

{{/* Combinations the daemon cannot run with; fail the render with what to change. */}}
{{- define "reverserd.validate" -}}
{{- include "reverserd.refuseOld" . -}}
{{- range .Values.attribution.sources -}}
{{- if not (has . (list "audit" "admission")) -}}
{{- fail (printf "attribution.sources may hold audit and admission, not %q" .) -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.attribution.webhook.certificates (list "generated" "cert-manager" "secret")) -}}
{{- fail "attribution.webhook.certificates must be generated, cert-manager or secret" -}}
{{- end -}}
{{- if and (has "audit" .Values.attribution.sources) (not .Values.attribution.audit.clientCASecret) -}}
{{- fail "the audit source needs attribution.audit.clientCASecret: only the API server's client certificate may post audit events" -}}
{{- end -}}
{{- if and .Values.attribution.admission.clientName (not .Values.attribution.audit.clientCASecret) -}}
{{- fail "attribution.admission.clientName needs attribution.audit.clientCASecret: the CA that signs the API server's admission client certificate" -}}
{{- end -}}
{{- if and .Values.attribution.sources .Values.attribution.webhook.networkPolicy.enabled (not .Values.attribution.webhook.networkPolicy.controlPlaneCIDRs) -}}
{{- fail "attribution.webhook.networkPolicy.controlPlaneCIDRs is required: the address ranges the API server calls webhooks from (packaging/README.md lists them per platform); or set attribution.webhook.networkPolicy.enabled=false to let every pod reach the webhook port" -}}
{{- end -}}
{{- if not (has .Values.logFormat (list "json" "text")) -}}
{{- fail (printf "logFormat must be json or text, not %q" .Values.logFormat) -}}
{{- end -}}
{{- if .Values.sharding.enabled -}}
{{- if .Values.leaderElection.enabled -}}
{{- fail "sharding.enabled replaces leaderElection.enabled: set one of them" -}}
{{- end -}}
{{- if or (not .Values.persistence.enabled) .Values.persistence.existingClaim -}}
{{- fail "sharding.enabled needs persistence.enabled without existingClaim: each replica gets its own claim, so that it returns with its journal" -}}
{{- end -}}
{{- else if gt (int .Values.replicaCount) 1 -}}
{{- if not .Values.leaderElection.enabled -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without a Lease every replica would write to Git" -}}
{{- end -}}
{{- if .Values.persistence.enabled -}}
{{- fail "replicaCount > 1 needs persistence.enabled=false: each replica keeps its own journal, and one ReadWriteOnce claim cannot hold two" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Values of the gitops-reverser v0.17 chart. Those with a meaning here are read as aliases of
reverserd's own keys (the old key wins when both are given); the others stop the render with
the reverserd key or the reason to use instead, so that no old values file is silently ignored.
docs/migrating-from-gitops-reverser.md lists each of them.
*/}}
{{- define "reverserd.old" -}}
{{- $values := index . 0 -}}
{{- $path := index . 1 -}}
{{- $found := $values -}}
{{- range splitList "." $path -}}
{{- if and (kindIs "map" $found) (hasKey $found .) -}}
{{- $found = index $found . -}}
{{- else -}}
{{- $found = "<absent>" -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "value" $found) -}}
{{- end -}}

{{/* Whether the v0.17 value at a dotted path is present: "true" or "". */}}
{{- define "reverserd.hasOld" -}}
{{- $got := (include "reverserd.old" .) | fromJson -}}
{{- if not (eq (toString $got.value) "<absent>") -}}true{{- end -}}
{{- end -}}

{{/* The v0.17 value at a dotted path, or the default given as third element. */}}
{{- define "reverserd.oldOr" -}}
{{- $got := (include "reverserd.old" (list (index . 0) (index . 1))) | fromJson -}}
{{- if eq (toString $got.value) "<absent>" -}}
{{- toJson (dict "value" (index . 2)) -}}
{{- else -}}
{{- toJson $got -}}
{{- end -}}
{{- end -}}

{{- define "reverserd.refuseOld" -}}
{{- $values := .Values.AsMap -}}
{{- $refused := dict
  "controllerManager" "reverserd serves health, readiness, metrics and status on one HTTP port: set service.port (probes are livenessProbe and readinessProbe)"
  "servers" "reverserd serves one plain HTTP port and no admission or audit server: set service.port"
  "webhook" "reverserd runs no admission webhook; it reads changes by watching the API server"
  "certificates" "reverserd serves no TLS endpoint and needs no cert-manager Certificate"
  "service.ports.admission" "reverserd runs no admission webhook: remove it (the HTTP port is service.port)"
  "service.ports.audit" "reverserd serves no audit endpoint: remove it (the HTTP port is service.port)"
-}}
{{- range $path := keys $refused | sortAlpha -}}
{{- if include "reverserd.hasOld" (list $values $path) -}}
{{- fail (printf "%s is a gitops-reverser value reverserd does not take: %s; see docs/migrating-from-gitops-reverser.md" $path (index $refused $path)) -}}
{{- end -}}
{{- end -}}
{{- if regexMatch "(^|/)gitops-reverser$" .Values.image.repository -}}
{{- fail (printf "image.repository %s is the gitops-reverser image, which does not understand reverserd's arguments: set image.repository to the reverserd image (docs/migrating-from-gitops-reverser.md)" .Values.image.repository) -}}
{{- end -}}
{{- $development := (include "reverserd.oldOr" (list $values "logging.development" false)) | fromJson -}}
{{- if $development.value -}}
{{- fail "logging.development is a gitops-reverser value: set logFormat=text and logLevel=DEBUG instead" -}}
{{- end -}}
{{- $stacktrace := (include "reverserd.oldOr" (list $values "logging.stacktraceLevel" "error")) | fromJson -}}
{{- if ne (lower (toString $stacktrace.value)) "error" -}}
{{- fail (printf "logging.stacktraceLevel %s: reverserd logs a traceback with every ERROR line and nothing else; remove logging.stacktraceLevel" (toString $stacktrace.value)) -}}
{{- end -}}
{{- $scheme := (include "reverserd.oldOr" (list $values "monitoring.serviceMonitor.scheme" "http")) | fromJson -}}
{{- if ne (toString $scheme.value) "http" -}}
{{- fail "monitoring.serviceMonitor.scheme: reverserd serves /metrics over plain HTTP only; remove it (and put TLS in front of the Service if you need it)" -}}
{{- end -}}
{{- $path := (include "reverserd.oldOr" (list $values "monitoring.serviceMonitor.path" "/metrics")) | fromJson -}}
{{- if ne (toString $path.value) "/metrics" -}}
{{- fail (printf "monitoring.serviceMonitor.path %s: reverserd serves metrics on /metrics only; remove it" (toString $path.value)) -}}
{{- end -}}
{{- $port := (include "reverserd.oldOr" (list $values "monitoring.serviceMonitor.port" "http")) | fromJson -}}
{{- if not (has (toString $port.value) (list "http" "metrics")) -}}
{{- fail (printf "monitoring.serviceMonitor.port %s: reverserd's Service has one port, named http; remove it" (toString $port.value)) -}}
{{- end -}}
{{- end -}}

{{/* --log-level: logLevel, or the v0.17 logging.level. */}}
{{- define "reverserd.logLevel" -}}
{{- (include "reverserd.oldOr" (list .Values.AsMap "logging.level" .Values.logLevel) | fromJson).value | upper -}}
{{- end -}}

{{/* --log-format: logFormat, or the v0.17 logging.encoder (json, or console for text). */}}
{{- define "reverserd.logFormat" -}}
{{- $encoder := (include "reverserd.oldOr" (list .Values.AsMap "logging.encoder" "") | fromJson).value -}}
{{- if eq $encoder "" -}}
{{- .Values.logFormat -}}
{{- else if eq $encoder "json" -}}
json
{{- else if eq $encoder "console" -}}
text
{{- else -}}
{{- fail (printf "logging.encoder must be json or console, not %q (reverserd's key is logFormat: json or text)" $encoder) -}}
{{- end -}}
{{- end -}}

{{/* The Service port: service.port, or the v0.17 service.ports.metrics. */}}
{{- define "reverserd.servicePort" -}}
{{- (include "reverserd.oldOr" (list .Values.AsMap "service.ports.metrics" .Values.service.port) | fromJson).value | int -}}
{{- end -}}

{{/* metrics.serviceMonitor with the v0.17 monitoring.serviceMonitor keys laid over it, as JSON. */}}
{{- define "reverserd.serviceMonitor" -}}
{{- $old := (include "reverserd.oldOr" (list .Values.AsMap "monitoring.serviceMonitor" dict) | fromJson).value -}}
{{- toJson (mergeOverwrite (deepCopy .Values.metrics.serviceMonitor) (omit $old "path" "port" "scheme")) -}}
{{- end -}}

{{/* Environment variables: extraEnv, then the v0.17 env. */}}
{{- define "reverserd.env" -}}
{{- $old := (include "reverserd.oldOr" (list .Values.AsMap "env" list) | fromJson).value -}}
{{- toJson (dict "value" (concat .Values.extraEnv $old)) -}}
{{- end -}}

{{/* The Deployment strategy: deploymentStrategy, else Recreate with a claim, else RollingUpdate. */}}
{{- define "reverserd.strategy" -}}
{{- $strategy := .Values.deploymentStrategy -}}
{{- if not $strategy -}}
{{- if .Values.persistence.enabled -}}
{{- $strategy = dict "type" "Recreate" -}}
{{- else -}}
{{- $strategy = dict "type" "RollingUpdate" -}}
{{- end -}}
{{- else if and .Values.persistence.enabled (eq (toString $strategy.type) "RollingUpdate") -}}
{{- $surge := (include "reverserd.oldOr" (list $strategy "rollingUpdate.maxSurge" "25%") | fromJson).value -}}
{{- if not (eq (toString $surge) "0") -}}
{{- fail "deploymentStrategy RollingUpdate with persistence.enabled needs rollingUpdate.maxSurge: 0: a surge pod would open the same journal (or use type Recreate)" -}}
{{- end -}}
{{- end -}}
{{- toYaml $strategy -}}
{{- end -}}
