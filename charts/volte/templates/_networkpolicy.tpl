{{/* Pieces of networkpolicy.yaml. */}}

{{/* ipBlock peers from a list of CIDRs. */}}
{{- define "volte.cidrPeers" -}}
{{- range . }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- end }}

{{/* The metrics ingress rule: (dict "root" $ "from" peers) */}}
{{- define "volte.metricsRule" -}}
{{- if .root.Values.metrics.enabled }}
- from:
    {{- toYaml .from | nindent 4 }}
  ports:
    - port: {{ .root.Values.metrics.port }}
      protocol: TCP
{{- end }}
{{- end }}
