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
app.kubernetes.io/managed-by: {{ .Release.Service }}
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

{{/* Combinations the daemon cannot run with; fail the render with what to change. */}}
{{- define "reverserd.validate" -}}
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
{{- if not (has .Values.logFormat (list "json" "text")) -}}
{{- fail (printf "logFormat must be json or text, not %q" .Values.logFormat) -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- if not .Values.leaderElection.enabled -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without a Lease every replica would write to Git" -}}
{{- end -}}
{{- if .Values.persistence.enabled -}}
{{- fail "replicaCount > 1 needs persistence.enabled=false: each replica keeps its own journal, and one ReadWriteOnce claim cannot hold two" -}}
{{- end -}}
{{- end -}}
{{- end -}}
