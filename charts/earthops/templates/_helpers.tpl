{{/* Chart name, or nameOverride. */}}
{{- define "earthops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: fullnameOverride, else "<release>-<name>", else the release name alone when
it already contains the name. 63 characters at most (DNS label).
*/}}
{{- define "earthops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of cluster-scoped RBAC objects. They carry the release namespace so that two releases of the same
name in different namespaces (one operator per team namespace) do not collide.
*/}}
{{- define "earthops.clusterName" -}}
{{- printf "%s-%s" (include "earthops.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "earthops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (a Deployment selector cannot change). */}}
{{- define "earthops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "earthops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels of every object. */}}
{{- define "earthops.labels" -}}
helm.sh/chart: {{ include "earthops.chart" . }}
{{ include "earthops.selectorLabels" . }}
app.kubernetes.io/version: {{ include "earthops.imageTag" . | quote }}
app.kubernetes.io/part-of: earthops
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "earthops.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "earthops.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "earthops.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "earthops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "earthops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator watches in namespaced mode, as a JSON list (parse with fromJsonArray):
watch.namespaces without duplicates, or the release namespace when that list is empty.
*/}}
{{- define "earthops.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{- define "earthops.peeringName" -}}
{{- default (include "earthops.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
Checks the schema cannot express clearly (or that must hold even with --skip-schema-validation).
Included by the Deployment, so it runs for every render.
*/}}
{{- define "earthops.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) }}
{{- fail (printf "replicas=%d needs peering.enabled=true: without kopf peering every replica would handle every resource; set replicas to 1 or enable peering" (int .Values.replicas)) }}
{{- end }}
{{- if and .Values.watch.allNamespaces .Values.watch.namespaces }}
{{- fail "watch.namespaces must be empty when watch.allNamespaces is true: choose all namespaces or a list" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.enabled=true: there is no metrics endpoint to scrape" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.health.port)) }}
{{- fail (printf "metrics.port and health.port are both %d: the two endpoints need different ports" (int .Values.health.port)) }}
{{- end }}
{{- end }}
