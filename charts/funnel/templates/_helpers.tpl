{{/*
Names, labels, images and the pieces every pod shares (security contexts, scratch volumes,
environment). Names are truncated to 63 characters (the DNS label limit).
*/}}

{{- define "funnel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "funnel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A name for a part of the release: "<fullname>-<suffix>", the full name shortened so that the
suffix survives the 63-character limit.
*/}}
{{- define "funnel.componentName" -}}
{{- $ctx := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $max := sub 62 (len $suffix) | int -}}
{{- printf "%s-%s" (include "funnel.fullname" $ctx | trunc $max | trimSuffix "-") $suffix -}}
{{- end -}}

{{/*
The RayService's name. KubeRay derives the RayCluster's ("<name>-<5 chars>") and its pods'
("<cluster>-head-<5 chars>", "<cluster>-<group>-worker-<5 chars>") names from it, so it is kept
short enough for those to stay within 63 characters.
*/}}
{{- define "funnel.rayServiceName" -}}
{{- include "funnel.fullname" . | trunc 30 | trimSuffix "-" -}}
{{- end -}}

{{/*
The training RayJob's name: "<fullname>-train". KubeRay refuses a RayJob name longer than 47
characters (MaxRayJobNameLength: 53, the RayCluster limit, less the 6 characters of the
cluster's suffix; ray-operator/controllers/ray/utils/constant.go and validation.go), so a
longer one keeps its first 32 characters and gets 8 hex digits of the full name's SHA-256
in their place: "<32 chars>-<8 hex>-train", 47 characters, still one per release.
*/}}
{{- define "funnel.rayJobName" -}}
{{- $full := include "funnel.fullname" . -}}
{{- $name := printf "%s-train" $full -}}
{{- if gt (len $name) 47 -}}
{{- $name = printf "%s-%s-train" ($full | trunc 32 | trimSuffix "-") ($full | sha256sum | trunc 8) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "funnel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "funnel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "funnel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "funnel.labels" -}}
helm.sh/chart: {{ include "funnel.chart" . }}
{{ include "funnel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: funnel
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* labels + app.kubernetes.io/component; call with (list $ "component") */}}
{{- define "funnel.componentLabels" -}}
{{ include "funnel.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* selector labels + component; call with (list $ "component") */}}
{{- define "funnel.componentSelectorLabels" -}}
{{ include "funnel.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "funnel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "funnel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The image reference; call with (list $ true) for the CUDA build. "<registry>/<repository>",
then "@<digest>" when a digest is set (it wins over the tag: a digest names exactly one build),
else ":<tag>". The CUDA build has a tag and a digest of its own (image.gpuTag, image.gpuDigest).
*/}}
{{- define "funnel.image" -}}
{{- $ := index . 0 -}}
{{- $gpu := index . 1 -}}
{{- $img := $.Values.image -}}
{{- $repo := $img.repository -}}
{{- with $img.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- $tag := $img.tag | default $.Chart.AppVersion -}}
{{- $digest := $img.digest -}}
{{- if $gpu -}}
{{- $tag = $img.gpuTag | default (printf "%s-cuda" $tag) -}}
{{- $digest = $img.gpuDigest -}}
{{- end -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the image reference names no registry host: no image.registry, and the
repository's first path component is no host (no "." or ":", not "localhost"), so the
container runtime would look for it on Docker Hub.
*/}}
{{- define "funnel.imageHasNoRegistry" -}}
{{- if not .Values.image.registry -}}
{{- $parts := splitList "/" .Values.image.repository -}}
{{- $first := index $parts 0 -}}
{{- if or (eq (len $parts) 1) (not (or (contains "." $first) (contains ":" $first) (eq $first "localhost"))) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* where the volumes go in every container */}}
{{- define "funnel.paths" -}}
bundles: /bundles
data: /data
rolloutDir: /etc/funnel/rollout
serveConfigDir: /etc/funnel/serve
metricsDir: /var/lib/funnel/metrics
{{- end -}}

{{- define "funnel.bundlePath" -}}
{{- printf "%s/%s" (include "funnel.paths" . | fromYaml).bundles .Values.bundle.version -}}
{{- end -}}

{{- define "funnel.bundlesClaim" -}}
{{- .Values.storage.bundles.existingClaim | default (include "funnel.componentName" (list . "bundles")) -}}
{{- end -}}

{{- define "funnel.dataClaim" -}}
{{- .Values.storage.data.existingClaim | default (include "funnel.componentName" (list . "data")) -}}
{{- end -}}

{{- define "funnel.impressionsUrl" -}}
{{- .Values.storage.impressionsUrl | default (printf "%s/impressions" (include "funnel.paths" . | fromYaml).data) -}}
{{- end -}}

{{- define "funnel.driftReportsUrl" -}}
{{- .Values.storage.driftReportsUrl | default (printf "%s/drift-reports" (include "funnel.paths" . | fromYaml).data) -}}
{{- end -}}

{{/* the data volume is mounted when either URL is left on it */}}
{{- define "funnel.usesDataVolume" -}}
{{- if and .Values.storage.data.enabled (or (not .Values.storage.impressionsUrl) (not .Values.storage.driftReportsUrl)) -}}true{{- end -}}
{{- end -}}

{{- define "funnel.reviewDbSecret" -}}
{{- .Values.review.database.existingSecret | default (include "funnel.componentName" (list . "review-db")) -}}
{{- end -}}

{{- define "funnel.featuresSecret" -}}
{{- .Values.features.redis.existingSecret | default (include "funnel.componentName" (list . "features-redis")) -}}
{{- end -}}

{{- define "funnel.adminSecret" -}}
{{- .Values.adminToken.existingSecret | default (include "funnel.componentName" (list . "admin")) -}}
{{- end -}}

{{- define "funnel.consoleSecret" -}}
{{- .Values.console.sessionSecret.existingSecret | default (include "funnel.componentName" (list . "console")) -}}
{{- end -}}

{{/*
The console as the app gets it: args.console of the Serve config (console.*, then
serve.args.console, which wins). "true" when it runs; the variable holding the session secret.
*/}}
{{- define "funnel.consoleEnabled" -}}
{{- if ne (toString (dig "console" "enabled" true (include "funnel.serveArgs" . | fromYaml))) "false" -}}true{{- end -}}
{{- end -}}

{{- define "funnel.consoleSecretEnv" -}}
{{- dig "console" "session_secret_env" "FUNNEL_CONSOLE_SECRET" (include "funnel.serveArgs" . | fromYaml) -}}
{{- end -}}

{{- define "funnel.tritonHost" -}}
{{- printf "%s.%s.svc" (include "funnel.componentName" (list . "triton")) .Release.Namespace -}}
{{- end -}}

{{/* the pod securityContext */}}
{{- define "funnel.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{/* the container securityContext */}}
{{- define "funnel.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/*
Environment of every Funnel container: HOME and caches on the /tmp emptyDir (the root
filesystem is read-only), models offline, Ray's usage stats off.
*/}}
{{- define "funnel.baseEnv" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: HF_HUB_OFFLINE
  value: "1"
- name: TOKENIZERS_PARALLELISM
  value: "false"
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* where the impression log and the drift reports go, and the object store's credentials */}}
{{- define "funnel.storageEnv" -}}
- name: FUNNEL_IMPRESSIONS_URL
  value: {{ include "funnel.impressionsUrl" . | quote }}
- name: FUNNEL_DRIFT_REPORTS_URL
  value: {{ include "funnel.driftReportsUrl" . | quote }}
{{- end -}}

{{- define "funnel.objectStoreEnvFrom" -}}
{{- if .Values.storage.objectStoreSecret -}}
envFrom:
  - secretRef:
      name: {{ .Values.storage.objectStoreSecret }}
{{- end -}}
{{- end -}}

{{/* the Secrets the serving app reads: the review database, the feature store's Redis, the
admin token and the console's session secret */}}
{{- define "funnel.secretEnv" -}}
{{- $env := list -}}
{{- if or .Values.review.database.url .Values.review.database.existingSecret -}}
{{- $ref := dict "name" (include "funnel.reviewDbSecret" .) "key" .Values.review.database.existingSecretKey -}}
{{- $env = append $env (dict "name" "FUNNEL_REVIEW_DATABASE_URL" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- if or .Values.features.redis.url .Values.features.redis.existingSecret -}}
{{- $ref := dict "name" (include "funnel.featuresSecret" .) "key" .Values.features.redis.existingSecretKey -}}
{{- $env = append $env (dict "name" "FUNNEL_FEATURES_REDIS_URL" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- if or .Values.adminToken.value .Values.adminToken.existingSecret -}}
{{- $ref := dict "name" (include "funnel.adminSecret" .) "key" .Values.adminToken.existingSecretKey -}}
{{- $env = append $env (dict "name" "FUNNEL_ADMIN_TOKEN" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- if include "funnel.consoleEnabled" . -}}
{{- $ref := dict "name" (include "funnel.consoleSecret" .) "key" .Values.console.sessionSecret.existingSecretKey -}}
{{- $env = append $env (dict "name" (include "funnel.consoleSecretEnv" .) "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- if $env -}}{{ toYaml $env }}{{- end -}}
{{- end -}}

{{/* scratch volumes every pod has: /tmp and a memory-backed /dev/shm */}}
{{- define "funnel.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: dshm
  emptyDir:
    medium: Memory
    {{- with .Values.shmSizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end -}}

{{- define "funnel.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- end -}}

{{/*
The bundles volume. Without the registry: the bundles PVC (filled by the training job). With
it: each pod's own cache, an emptyDir that its init container fills with bundle.version from
the registry (registry.cache.type emptyDir), or the bundles PVC kept between restarts (pvc).
*/}}
{{- define "funnel.bundlesVolume" -}}
- name: bundles
{{- if and .Values.registry.enabled (eq .Values.registry.cache.type "emptyDir") }}
  emptyDir:
    sizeLimit: {{ .Values.registry.cache.sizeLimit }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "funnel.bundlesClaim" . }}
{{- end }}
{{- end -}}

{{/* the bundles PVC as a volume: the training job's (its pods share Ray Train's checkpoints
there), with or without the registry */}}
{{- define "funnel.bundlesClaimVolume" -}}
- name: bundles
  persistentVolumeClaim:
    claimName: {{ include "funnel.bundlesClaim" . }}
{{- end -}}

{{/* whether a pod mounts the bundles PVC: without the registry, as its cache, or to train */}}
{{- define "funnel.usesBundlesClaim" -}}
{{- if or (not .Values.registry.enabled) (eq .Values.registry.cache.type "pvc") .Values.training.enabled -}}true{{- end -}}
{{- end -}}

{{- define "funnel.registrySecret" -}}
{{- .Values.registry.existingSecret | default (include "funnel.componentName" (list . "registry")) -}}
{{- end -}}

{{/*
Where the model registry is, from its Secret (docs/registry.md): the object store's fsspec URL,
the index database's URL, and for S3 an endpoint (S3-compatible stores) and credentials. The
optional keys may be absent from an existingSecret (e.g. credentials from the pod's service
account, IRSA or Workload Identity, instead of keys).
*/}}
{{- define "funnel.registryEnv" -}}
{{- if .Values.registry.enabled -}}
{{- $secret := include "funnel.registrySecret" . -}}
{{- range $name, $key := dict "FUNNEL_REGISTRY_URL" "url" "FUNNEL_REGISTRY_DATABASE_URL" "database-url" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- range $name, $key := dict "FUNNEL_REGISTRY_S3_ENDPOINT_URL" "s3-endpoint-url" "AWS_ACCESS_KEY_ID" "aws-access-key-id" "AWS_SECRET_ACCESS_KEY" "aws-secret-access-key" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end -}}
{{- end -}}

{{/*
The init container that pulls bundle.version from the registry into the pod's bundles volume
before the pod's own containers start: `funnel bundle pull`, every file checked against the
index, nothing kept of a download that does not match (the pod then does not start, and the
init container's log names the file). A version already in a PVC cache is not pulled again.
*/}}
{{- define "funnel.pullBundleInit" -}}
{{- if .Values.registry.enabled -}}
- name: pull-bundle
  image: {{ include "funnel.image" (list . false) }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - funnel
    - bundle
    - pull
    - {{ .Values.bundle.version | quote }}
    - --cache
    - {{ (include "funnel.paths" . | fromYaml).bundles }}
  env:
    {{- include "funnel.baseEnv" . | nindent 4 }}
    {{- include "funnel.registryEnv" . | nindent 4 }}
  resources:
    {{- toYaml .Values.registry.pullResources | nindent 4 }}
  securityContext:
    {{- include "funnel.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    {{- include "funnel.scratchMounts" . | nindent 4 }}
    - name: bundles
      mountPath: {{ (include "funnel.paths" . | fromYaml).bundles }}
{{- end -}}
{{- end -}}

{{- define "funnel.dataVolume" -}}
{{- if include "funnel.usesDataVolume" . -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "funnel.dataClaim" . }}
{{- end }}
{{- end -}}

{{- define "funnel.dataMount" -}}
{{- if include "funnel.usesDataVolume" . -}}
- name: data
  mountPath: {{ (include "funnel.paths" . | fromYaml).data }}
{{- end }}
{{- end -}}

{{- define "funnel.rolloutVolume" -}}
- name: rollout
  configMap:
    name: {{ include "funnel.componentName" (list . "rollout") }}
{{- end -}}

{{- define "funnel.rolloutMount" -}}
- name: rollout
  mountPath: {{ (include "funnel.paths" . | fromYaml).rolloutDir }}
  readOnly: true
{{- end -}}

{{- define "funnel.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}
