{{/* Names, labels, images and the pieces every volte workload shares. */}}

{{- define "volte.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "volte.fullname" -}}
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

{{- define "volte.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of a component's objects: (dict "root" $ "component" "sbc") */}}
{{- define "volte.componentName" -}}
{{- printf "%s-%s" (include "volte.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "volte.selectorLabels" -}}
app.kubernetes.io/name: {{ include "volte.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of a component: (dict "root" $ "component" "sbc") */}}
{{- define "volte.labels" -}}
helm.sh/chart: {{ include "volte.chart" .root }}
{{ include "volte.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: volte
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.site.name }}
volte.io/site: {{ . }}
{{- end }}
{{- end }}

{{/* Labels of release-wide objects (no component). */}}
{{- define "volte.commonLabels" -}}
helm.sh/chart: {{ include "volte.chart" . }}
app.kubernetes.io/name: {{ include "volte.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: volte
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Image reference: (dict "root" $ "image" .Values.sbc.image) */}}
{{- define "volte.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "volte.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "volte.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* host:port of a component's gRPC Service. */}}
{{- define "volte.grpcAddress" -}}
{{- printf "%s:%v" (include "volte.componentName" (dict "root" .root "component" .component)) .port -}}
{{- end }}

{{/* The Redis URL the state service uses. */}}
{{- define "volte.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "external" -}}
{{- required "redis.external.url is required with redis.mode=external" $r.external.url -}}
{{- else if eq $r.mode "standalone" -}}
{{- printf "redis://%s:%v/0" (include "volte.componentName" (dict "root" . "component" "redis")) $r.port -}}
{{- else -}}
{{- printf "redis+sentinel://%s:%v/%s/0" (include "volte.componentName" (dict "root" . "component" "redis-sentinel")) $r.sentinel.port $r.sentinel.masterSet -}}
{{- end -}}
{{- end }}

{{/* Pod-level settings shared by the volte workloads: (dict "root" $ "values" .Values.sbc) */}}
{{- define "volte.podCommon" -}}
serviceAccountName: {{ include "volte.serviceAccountName" .root }}
automountServiceAccountToken: {{ .automountToken | default false }}
enableServiceLinks: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else if ne .root.Values.antiAffinity "none" }}
affinity:
  podAntiAffinity:
    {{- $term := dict "labelSelector" (dict "matchLabels" (fromYaml (include "volte.selectorLabels" .))) "topologyKey" .root.Values.antiAffinityTopologyKey }}
    {{- if eq .root.Values.antiAffinity "hard" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - {{ toYaml $term | nindent 8 | trim }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          {{- toYaml $term | nindent 10 }}
    {{- end }}
{{- end }}
{{- end }}

{{/* Pod annotations shared by the volte workloads: (dict "root" $ "values" .Values.sbc) */}}
{{- define "volte.podAnnotations" -}}
{{- if .root.Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Environment every volte service gets. */}}
{{- define "volte.commonEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: VOLTE_INSTANCE_ID
  {{- if .Values.site.name }}
  value: {{ printf "%s/$(POD_NAME)" .Values.site.name | quote }}
  {{- else }}
  value: $(POD_NAME)
  {{- end }}
- name: VOLTE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: VOLTE_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | quote }}
{{- end }}

{{/* POD_NAME first: VOLTE_INSTANCE_ID refers to it with $(POD_NAME). */}}
{{- define "volte.podNameEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* extraEnv map -> env list */}}
{{- define "volte.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{/* gRPC probes on a port: (dict "root" $ "port" 50061) */}}
{{- define "volte.grpcProbes" -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
livenessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
{{- end }}

{{/* Ports every volte container has besides its own: metrics. */}}
{{- define "volte.metricsPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* /tmp, the only writable place. */}}
{{- define "volte.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- define "volte.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
