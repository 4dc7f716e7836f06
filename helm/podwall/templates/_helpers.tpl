{{/* The control plane's name: the release name, or "podwall" when it already says so. */}}
{{- define "podwall.fullname" -}}
{{- if contains "podwall" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-podwall" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "podwall.labels" -}}
app.kubernetes.io/name: podwall
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "podwall.selectorLabels" -}}
app.kubernetes.io/name: podwall
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "podwall.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where sidecars reach the control plane. */}}
{{- define "podwall.feedAddress" -}}
{{- printf "%s.%s.svc:%v" (include "podwall.fullname" .) .Release.Namespace .Values.controlPlane.feedPort -}}
{{- end -}}

{{- define "podwall.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "podwall.fullname" .) -}}
{{- end -}}
