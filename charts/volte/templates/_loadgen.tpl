{{/* The loadgen pod spec: (dict "root" $ "args" (list ...) "restartPolicy" "Never") */}}
{{- define "volte.loadgenPod" -}}
{{- $root := .root }}
{{- $v := $root.Values.loadgen }}
{{- $state := include "volte.grpcAddress" (dict "root" $root "component" "state" "port" $root.Values.state.grpcPort) }}
restartPolicy: {{ .restartPolicy }}
automountServiceAccountToken: false
enableServiceLinks: false
serviceAccountName: {{ include "volte.serviceAccountName" $root }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
containers:
  - name: loadgen
    image: {{ include "volte.image" (dict "root" $root "image" $v.image) }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    # The UEs bind to the pod's address; the sbc and state are the release's Services.
    # loadgen's --target must be an address (its UDP transport does not resolve names), so
    # the SIP Service's name is looked up first.
    command:
      - sh
      - -c
      - >-
        ip=$(getent hosts "$SIP_SERVICE" | awk '{ print $1; exit }');
        [ -n "$ip" ] || { echo "cannot resolve $SIP_SERVICE" >&2; exit 1; };
        case $ip in *:*) ip="[$ip]";; esac;
        exec loadgen "$@" --target="$ip:$SIP_PORT"
      - loadgen
    args:
      {{- toYaml .args | nindent 6 }}
      - --state={{ $state }}
      - --domain={{ $root.Values.domain }}
      - --bind=$(POD_IP)
    env:
      - name: POD_IP
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
      - name: SIP_SERVICE
        value: {{ include "volte.componentName" (dict "root" $root "component" "sip") }}
      - name: SIP_PORT
        value: {{ $root.Values.sbc.sipPort | quote }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      {{- include "volte.tmpMount" . | nindent 6 }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 256Mi
{{- end }}
