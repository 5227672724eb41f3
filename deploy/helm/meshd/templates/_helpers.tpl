{{/* Name of the chart's objects: the release name, or "meshd" when the release is called meshd. */}}
{{- define "meshd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "meshd.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "meshd.selectorLabels" -}}
app: meshd
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshd.serviceAccountName" -}}
{{- default (include "meshd.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "meshd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "meshd.rootNamespace" -}}
{{- default .Release.Namespace .Values.mesh.rootNamespace -}}
{{- end -}}

{{- define "meshd.discoveryAddress" -}}
{{- default (printf "%s.%s.svc:15012" .Values.serviceName .Release.Namespace) .Values.mesh.discoveryAddress -}}
{{- end -}}
