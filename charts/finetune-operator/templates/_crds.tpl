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
