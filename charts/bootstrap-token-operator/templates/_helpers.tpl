{{/* The release's full name, at most 63 characters. */}}
{{- define "bto.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "bto.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bto.labels" -}}
{{ include "bto.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "bto.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bto.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Rules for the namespaces the operator watches: what its controllers read and write. */}}
{{- define "bto.watchedRules" -}}
- apiGroups: ["bootstraptoken.dev"]
  resources: ["bootstraptokens"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["bootstraptoken.dev"]
  resources: ["bootstraptokens/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* Rules for the operator's own namespace, in both modes: its signing key Secret (watched so a
deletion is undone, with events on it) and its leader Lease, which it may hold nowhere else. */}}
{{- define "bto.ownRules" -}}
# Signing-key Secrets: read, created (the first key, and the next one on rotation), and their
# phase annotations patched.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["bootstraptoken.dev"]
  resources: ["revokedtokens"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Tokens of the bootstrap_token grant: written by server-side apply (a patch that creates, so
# both verbs), watched by every replica, deleted once expired, revoked or beyond the cap.
- apiGroups: ["bootstraptoken.dev"]
  resources: ["issuedtokens"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end -}}
