{{/*
What the operator may do, split by scope. These rules mirror finetune_operator.kube.REQUIRED_PERMISSIONS
(a chart test compares the two in both directions): change them together.
Output: a YAML map {namespaced: [rules], cluster: [rules]}.
*/}}
{{- define "finetune-operator.operatorRules" -}}
namespaced:
  - apiGroups: ["finetune.dev"]
    resources: ["datasets", "finetunejobs", "evaluations", "inferenceendpoints"]
    verbs: ["get", "list", "watch", "patch", "update"]
  - apiGroups: ["finetune.dev"]
    resources: ["datasets/status", "finetunejobs/status", "evaluations/status", "inferenceendpoints/status"]
    verbs: ["get", "patch", "update"]
  - apiGroups: [""]
    resources: ["configmaps", "services"]
    verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list", "watch"]
  # only the labels of a Secret a spec names (its owner's consent); never list, watch or the data
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get"]
  - apiGroups: ["", "events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
  - apiGroups: ["autoscaling"]
    resources: ["horizontalpodautoscalers"]
    verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
  {{- if .Values.peering.enabled }}
  - apiGroups: ["kopf.dev"]
    resources: ["kopfpeerings"]
    verbs: ["get", "list", "watch", "patch"]
  {{- end }}
cluster:
  - apiGroups: ["apiextensions.k8s.io"]
    resources: ["customresourcedefinitions"]
    verbs: ["get", "list", "watch"]
  - apiGroups: [""]
    resources: ["namespaces"]
    verbs: ["get", "list", "watch"]
  {{- if and .Values.peering.enabled (not (include "finetune-operator.watchNamespaces" .)) }}
  - apiGroups: ["kopf.dev"]
    resources: ["clusterkopfpeerings"]
    verbs: ["get", "list", "watch", "patch"]
  {{- end }}
{{- end }}
