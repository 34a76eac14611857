{{/*
The Ray pods (head and every worker group) share one container spec: the image, the
environment the Serve replicas inherit (Secrets, storage URLs, the metrics directory, the
ingress mode), the volumes, the security context. No checksum of the rollout or of the Serve
config goes into the pod templates on purpose: a change there would make KubeRay build a new
cluster, where serveConfigV2 alone is applied in place.
*/}}

{{- define "funnel.rayContainerCommon" -}}
image: {{ include "funnel.image" (list . false) }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
env:
  {{- include "funnel.baseEnv" . | nindent 2 }}
  {{- include "funnel.storageEnv" . | nindent 2 }}
  {{- with include "funnel.secretEnv" . }}{{ . | nindent 2 }}{{- end }}
  # prometheus_client's multiprocess mode: every Serve replica process of the pod writes its
  # samples here and /metrics renders the pod's totals (monitoring/metrics.py)
  - name: PROMETHEUS_MULTIPROC_DIR
    value: {{ (include "funnel.paths" . | fromYaml).metricsDir }}
  {{- if eq .Values.ingress.mode "haproxy" }}
  # Ray Serve's high-throughput mode (serve/ingress.py): HAProxy on the HTTP port, the ingress
  # replicas serving HTTP directly. Read by Ray's processes when they start.
  - name: RAY_SERVE_ENABLE_HA_PROXY
    value: "1"
  - name: RAY_SERVE_THROUGHPUT_OPTIMIZED
    value: "1"
  {{- end }}
{{- with include "funnel.objectStoreEnvFrom" . }}{{ . | nindent 0 }}{{- end }}
securityContext:
  {{- include "funnel.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  {{- include "funnel.scratchMounts" . | nindent 2 }}
  - name: metrics
    mountPath: {{ (include "funnel.paths" . | fromYaml).metricsDir }}
  - name: bundles
    mountPath: {{ (include "funnel.paths" . | fromYaml).bundles }}
    readOnly: true
  {{- with include "funnel.dataMount" . }}{{ . | nindent 2 }}{{- end }}
  {{- include "funnel.rolloutMount" . | nindent 2 }}
{{- end -}}
{{- define "funnel.rayPodCommon" -}}
serviceAccountName: {{ include "funnel.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with include "funnel.imagePullSecrets" . }}{{ . | nindent 0 }}{{- end }}
securityContext:
  {{- include "funnel.podSecurityContext" . | nindent 2 }}
volumes:
  {{- include "funnel.scratchVolumes" . | nindent 2 }}
  - name: metrics
    emptyDir: {}
  {{- include "funnel.bundlesVolume" . | nindent 2 }}
  {{- with include "funnel.dataVolume" . }}{{ . | nindent 2 }}{{- end }}
  {{- include "funnel.rolloutVolume" . | nindent 2 }}
{{- end -}}
{{- define "funnel.servePorts" -}}
- name: serve
  containerPort: {{ .Values.serve.httpPort }}
  protocol: TCP
{{- if .Values.serve.grpc.enabled }}
- name: grpc
  containerPort: {{ .Values.serve.grpc.port }}
  protocol: TCP
{{- end }}
- name: metrics
  containerPort: 8080
  protocol: TCP
{{- end -}}
