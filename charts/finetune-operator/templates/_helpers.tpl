{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every resource this chart makes.
*/}}
{{- define "finetune-operator.fullname" -}}
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

{{- define "finetune-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ include "finetune-operator.chart" . }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{/*
Labels that select the operator pods.
*/}}
{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion.
Call with (dict "image" .Values.image "context" $).
*/}}
{{- define "finetune-operator.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "finetune-operator.trainerImage" -}}
{{- include "finetune-operator.image" (dict "image" .Values.trainer.image "context" .) }}
{{- end }}

{{/*
The builtin runtime image: the trainer image unless server.image.repository is set.
*/}}
{{- define "finetune-operator.serverImage" -}}
{{- if .Values.server.image.repository }}
{{- include "finetune-operator.image" (dict "image" .Values.server.image "context" .) }}
{{- else }}
{{- include "finetune-operator.trainerImage" . }}
{{- end }}
{{- end }}

{{- define "finetune-operator.minioFullname" -}}
{{- printf "%s-minio" (include "finetune-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object store endpoint: the chart's MinIO when it is enabled and no endpoint is given.
*/}}
{{- define "finetune-operator.storageEndpoint" -}}
{{- if .Values.storage.endpoint }}
{{- .Values.storage.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "%s.%s.svc:9000" (include "finetune-operator.minioFullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "finetune-operator.storageSecure" -}}
{{- if and .Values.minio.enabled (not .Values.storage.endpoint) }}false{{ else }}{{ .Values.storage.secure }}{{ end }}
{{- end }}

{{- define "finetune-operator.peeringName" -}}
{{- default (include "finetune-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
The restricted-profile security context of every container this chart runs.
*/}}
{{- define "finetune-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "finetune-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Checks that stop a release with values that cannot work.
*/}}
{{- define "finetune-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without kopf peering every replica would handle every object" }}
{{- end }}
{{- if and .Values.minio.enabled (not .Values.storage.credentialsSecret.name) }}
{{- fail "minio.enabled needs storage.credentialsSecret.name: MinIO takes its root credentials from that Secret" }}
{{- end }}
{{- end }}

{{/*
tenancy.sharedPrefixes as full s3:// URIs, comma separated: a plain folder is a folder of storage.bucket.
*/}}
{{- define "finetune-operator.sharedPrefixes" -}}
{{- $out := list }}
{{- range .Values.tenancy.sharedPrefixes }}
{{- if hasPrefix "s3://" . }}
{{- $out = append $out (trimSuffix "/" .) }}
{{- else }}
{{- $out = append $out (printf "s3://%s/%s" $.Values.storage.bucket (trimAll "/" .)) }}
{{- end }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/*
The namespaces the operator watches, comma separated ("" for all): watchNamespace and watchNamespaces joined.
*/}}
{{- define "finetune-operator.watchNamespaces" -}}
{{- $all := concat (list .Values.watchNamespace) (.Values.watchNamespaces | default list) | compact | uniq }}
{{- join "," $all }}
{{- end }}
