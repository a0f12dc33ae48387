{{/* Pod settings of the Redis pods: (dict "root" $ "c" $c) */}}
{{- define "volte.redisPod" -}}
{{- $r := .root.Values.redis -}}
automountServiceAccountToken: false
enableServiceLinks: false
serviceAccountName: {{ include "volte.serviceAccountName" .root }}
securityContext:
  {{- toYaml $r.securityContext | nindent 2 }}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with $r.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $r.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $r.affinity }}
affinity:
  {{- toYaml $r.affinity | nindent 2 }}
{{- else if ne .root.Values.antiAffinity "none" }}
affinity:
  podAntiAffinity:
    {{- $term := dict "labelSelector" (dict "matchLabels" (fromYaml (include "volte.selectorLabels" .c))) "topologyKey" .root.Values.antiAffinityTopologyKey }}
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

{{/* The redis container's image, probes, resources and security: (dict "root" $) */}}
{{- define "volte.redisContainer" -}}
{{- $r := .root.Values.redis -}}
image: {{ printf "%s:%s" $r.image.repository $r.image.tag }}
imagePullPolicy: {{ $r.image.pullPolicy }}
startupProbe:
  tcpSocket:
    port: {{ $r.port }}
  periodSeconds: 1
  failureThreshold: 60
readinessProbe:
  exec:
    command: [redis-cli, -p, {{ $r.port | quote }}, ping]
  periodSeconds: 5
  timeoutSeconds: 2
livenessProbe:
  tcpSocket:
    port: {{ $r.port }}
  periodSeconds: 10
  failureThreshold: 6
resources:
  {{- toYaml $r.resources | nindent 2 }}
securityContext:
  {{- toYaml .root.Values.containerSecurityContext | nindent 2 }}
{{- end }}
