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
  {{- with include "funnel.registryEnv" . }}{{ . | nindent 2 }}{{- end }}
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
    # with the registry, the replicas pull the versions a rollout names into it
    readOnly: {{ not .Values.registry.enabled }}
  {{- with include "funnel.dataMount" . }}{{ . | nindent 2 }}{{- end }}
  {{- include "funnel.rolloutMount" . | nindent 2 }}
{{- end -}}
{{/*
The pod spec every Ray pod shares, but automountServiceAccountToken: see
funnel.rayHeadServiceAccountToken.
*/}}
{{- define "funnel.rayPodCommon" -}}
serviceAccountName: {{ include "funnel.serviceAccountName" . }}
{{- with include "funnel.imagePullSecrets" . }}{{ . | nindent 0 }}{{- end }}
securityContext:
  {{- include "funnel.podSecurityContext" . | nindent 2 }}
{{- with include "funnel.pullBundleInit" . }}
initContainers:
  {{- . | nindent 2 }}
{{- end }}
volumes:
  {{- include "funnel.scratchVolumes" . | nindent 2 }}
  - name: metrics
    emptyDir: {}
  {{- include "funnel.bundlesVolume" . | nindent 2 }}
  {{- with include "funnel.dataVolume" . }}{{ . | nindent 2 }}{{- end }}
  {{- include "funnel.rolloutVolume" . | nindent 2 }}
{{- end -}}
{{/*
The head's automountServiceAccountToken. KubeRay's in-tree autoscaler runs as a sidecar of the
head and calls the Kubernetes API (it lists the pods, patches the RayCluster's replicas), so
with ray.autoscaling.enabled the head gets its token. The Role and RoleBinding it needs are
KubeRay's: with enableInTreeAutoscaling the operator creates a Role and a RoleBinding named
after the RayCluster, bound to the head's serviceAccountName; it creates the ServiceAccount
itself only when the head names none, and otherwise needs it to exist, which
serviceAccount.create provides (ray-operator/controllers/ray/raycluster_controller.go,
reconcileAutoscalerServiceAccount / Role / RoleBinding; common/rbac.go). Every other pod keeps
automountServiceAccountToken.
*/}}
{{- define "funnel.rayHeadServiceAccountToken" -}}
{{- or .Values.ray.autoscaling.enabled .Values.automountServiceAccountToken -}}
{{- end -}}

{{/*
The Serve ports of a Ray container; call with (list $ rayStartParams). The gRPC port is named
"serve-grpc": KubeRay (1.6 and later) puts every head port named "serve" or "serve-*" on the
serve Service it keeps on the serving cluster (ray-operator/controllers/ray/common/service.go,
isServingPort). The metrics port is the group's metrics-export-port.
*/}}
{{- define "funnel.servePorts" -}}
{{- $ := index . 0 -}}
{{- $params := index . 1 | default dict -}}
- name: serve
  containerPort: {{ $.Values.serve.httpPort }}
  protocol: TCP
{{- if $.Values.serve.grpc.enabled }}
- name: serve-grpc
  containerPort: {{ $.Values.serve.grpc.port }}
  protocol: TCP
{{- end }}
- name: metrics
  containerPort: {{ get $params "metrics-export-port" | default "8080" | int }}
  protocol: TCP
{{- end -}}

{{/* the dashboard agent's port of a group: (rayStartParams) */}}
{{- define "funnel.agentPort" -}}
{{- get (. | default dict) "dashboard-agent-listen-port" | default "52365" | int -}}
{{- end -}}

{{/* the dashboard's port: (the head's rayStartParams) */}}
{{- define "funnel.dashboardPort" -}}
{{- get (. | default dict) "dashboard-port" | default "8265" | int -}}
{{- end -}}

{{/*
The health check the Ray containers' probes run: GET each URL (argv[2:]) with argv[1] seconds
of timeout, each answer must say "success", as KubeRay's own probes require. The interpreter
only (-I: no PYTHON* variables, no user site), the standard library only, and no proxy from
the environment: the image has no wget or curl, and `funnel` would import Ray first.
*/}}
{{- define "funnel.rayHealthScript" -}}
import sys, urllib.request as u
o = u.build_opener(u.ProxyHandler({}))
for url in sys.argv[2:]:
    try:
        body = o.open(url, timeout=float(sys.argv[1])).read()
    except Exception as e:
        sys.exit(f"{url}: {e}")
    if b"success" not in body:
        sys.exit(f"{url}: {body[:200]!r}")
{{- end -}}

{{/*
readinessProbe and livenessProbe of a Ray container, in place of the ones KubeRay injects
(it injects only where a container has none: initLivenessAndReadinessProbe in
ray-operator/controllers/ray/common/pod.go), which run wget, absent from the image. They check
what KubeRay's check, on the ports the group's rayStartParams give:
- every node: the raylet, through the dashboard agent (dashboard-agent-listen-port, default
  52365): /api/local_raylet_healthz;
- the head: also the GCS, through the dashboard (dashboard-port, default 8265): /api/gcs_healthz;
- a RayService's workers, for readiness only: also Serve's proxy on the node,
  http://localhost:<serve.httpPort>/-/healthz, as KubeRay adds for RayService workers (the
  serve Service's endpoints are the ready pods); not with serve.proxyLocation HeadOnly, where
  workers run no proxy. The head's proxy is checked by the operator itself (the ray.io/serve
  label), not by a probe.
Timings are KubeRay's (utils/constant.go), with 5 s timeouts for the interpreter's start.
Call with (dict "params" rayStartParams "head" bool "serving" bool "ctx" $).
*/}}
{{- define "funnel.rayProbes" -}}
{{- $params := .params | default dict -}}
{{- $live := list (printf "http://localhost:%d/api/local_raylet_healthz" (include "funnel.agentPort" $params | int)) -}}
{{- if .head -}}
{{- $live = append $live (printf "http://localhost:%d/api/gcs_healthz" (include "funnel.dashboardPort" $params | int)) -}}
{{- end -}}
{{- $ready := $live -}}
{{- if .serving -}}
{{- $ready = append $live (printf "http://localhost:%d/-/healthz" (.ctx.Values.serve.httpPort | int)) -}}
{{- end -}}
{{- $cmd := list "python" "-I" "-c" (include "funnel.rayHealthScript" .) "2" -}}
readinessProbe:
  exec:
    command:
      {{- toYaml (concat $cmd $ready) | nindent 6 }}
  initialDelaySeconds: 10
  periodSeconds: 5
  timeoutSeconds: 5
  successThreshold: 1
  # a serving worker leaves the serve Service at its proxy's first failed check (it drains)
  failureThreshold: {{ if .serving }}1{{ else }}10{{ end }}
livenessProbe:
  exec:
    command:
      {{- toYaml (concat $cmd $live) | nindent 6 }}
  initialDelaySeconds: 30
  periodSeconds: 5
  timeoutSeconds: 5
  successThreshold: 1
  failureThreshold: 120
{{- end -}}
