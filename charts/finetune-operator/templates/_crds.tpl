{{/*
One CRD from a file: parsed, labelled, annotated to land before anything else in Argo CD (sync wave -1),
and kept on uninstall when crds.keep is true.
Call with (dict "path" <file path> "context" $).
*/}}
{{- define "finetune-operator.crd" -}}
{{- $crd := .context.Files.Get .path | fromYaml }}
{{- if hasKey $crd "Error" }}
{{- fail (printf "%s is not valid YAML: %s" .path $crd.Error) }}
{{- end }}
{{- if ne $crd.kind "CustomResourceDefinition" }}
{{- fail (printf "%s holds a %s, not a CustomResourceDefinition" .path $crd.kind) }}
{{- end }}
{{- $metadata := $crd.metadata }}
{{- $labels := merge (default (dict) $metadata.labels) (include "finetune-operator.labels" .context | fromYaml) }}
{{- $annotations := default (dict) $metadata.annotations }}
{{- $_ := set $annotations "argocd.argoproj.io/sync-wave" "-1" }}
{{- if .context.Values.crds.keep }}
{{- $_ := set $annotations "helm.sh/resource-policy" "keep" }}
{{- end }}
{{- $_ := set $metadata "labels" $labels }}
{{- $_ := set $metadata "annotations" $annotations }}
{{- toYaml $crd }}
{{- end }}

{{/*
"true" when the CRD in this file already exists in the cluster and does not belong to this release
(no Helm ownership annotations naming it), else "". Call with (dict "path" <file path> "context" $).
*/}}
{{- define "finetune-operator.crdManagedElsewhere" -}}
{{- $crd := .context.Files.Get .path | fromYaml }}
{{- $live := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" $crd.metadata.name }}
{{- if $live }}
{{- $annotations := default (dict) $live.metadata.annotations }}
{{- $release := index $annotations "meta.helm.sh/release-name" | default "" }}
{{- $namespace := index $annotations "meta.helm.sh/release-namespace" | default "" }}
{{- if not (and (eq $release .context.Release.Name) (eq $namespace .context.Release.Namespace)) }}true{{- end }}
{{- end }}
{{- end }}

{{/*
The names of the CRDs this release leaves to another manager, comma separated ("" when none).
*/}}
{{- define "finetune-operator.crdsManagedElsewhere" -}}
{{- $names := list }}
{{- if .Values.crds.enabled }}
{{- range $path, $_ := .Files.Glob "files/crds/*.yaml" }}
{{- if include "finetune-operator.crdManagedElsewhere" (dict "path" $path "context" $) }}
{{- $names = append $names (base $path | trimSuffix ".yaml") }}
{{- end }}
{{- end }}
{{- end }}
{{- join ", " $names }}
{{- end }}
