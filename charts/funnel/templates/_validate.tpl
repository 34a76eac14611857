{{/*
funnel.validateValues: fail the render on values that cannot work, naming each value, what it
is and what is allowed. values.schema.json already refuses wrong types, unknown enums and
negative counts; the checks on enums and counts are repeated here so that a render that skips
the schema (helm template --skip-schema-validation) still refuses them, and the combinations
a schema cannot express are only here.
*/}}

{{- define "funnel.validateValues" -}}
{{- $messages := list -}}
{{- $messages = append $messages (include "funnel.validate.enums" .) -}}
{{- $messages = append $messages (include "funnel.validate.ingress" .) -}}
{{- $messages = append $messages (include "funnel.validate.replicas" .) -}}
{{- $messages = append $messages (include "funnel.validate.gpu" .) -}}
{{- $messages = append $messages (include "funnel.validate.rollout" .) -}}
{{- $messages = append $messages (include "funnel.validate.storage" .) -}}
{{- $messages = append $messages (include "funnel.validate.registry" .) -}}
{{- $messages = append $messages (include "funnel.validate.image" .) -}}
{{- $messages = append $messages (include "funnel.validate.security" .) -}}
{{- $messages = append $messages (include "funnel.validate.autoscaler" .) -}}
{{- $messages = append $messages (include "funnel.validate.extraEnv" .) -}}
{{- $messages = append $messages (include "funnel.validate.disruptionBudgets" .) -}}
{{- $messages = append $messages (include "funnel.validate.console" .) -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- fail (printf "\n\nVALUES VALIDATION:\n%s" (join "\n" $messages)) -}}
{{- end -}}
{{- end -}}

{{/* one line per value outside its enum: (list "path" value (list allowed...)) */}}
{{- define "funnel.validate.enum" -}}
{{- $path := index . 0 -}}
{{- $value := index . 1 -}}
{{- $allowed := index . 2 -}}
{{- if not (has $value $allowed) -}}
{{ $path }}: {{ $value | toJson }} is not allowed; allowed: {{ join ", " $allowed }}
{{ end -}}
{{- end -}}

{{- define "funnel.validate.enums" -}}
{{- include "funnel.validate.enum" (list "ingress.mode" .Values.ingress.mode (list "proxy" "haproxy")) -}}
{{- include "funnel.validate.enum" (list "serve.proxyLocation" .Values.serve.proxyLocation (list "EveryNode" "HeadOnly")) -}}
{{- include "funnel.validate.enum" (list "serve.service.type" .Values.serve.service.type (list "ClusterIP" "NodePort" "LoadBalancer")) -}}
{{- include "funnel.validate.enum" (list "image.pullPolicy" .Values.image.pullPolicy (list "Always" "IfNotPresent" "Never")) -}}
{{- include "funnel.validate.enum" (list "ray.upgradeStrategy" .Values.ray.upgradeStrategy (list "NewCluster" "None")) -}}
{{- include "funnel.validate.enum" (list "training.profile" .Values.training.profile (list "tiny" "demo" "large")) -}}
{{- include "funnel.validate.enum" (list "registry.cache.type" .Values.registry.cache.type (list "emptyDir" "pvc")) -}}
{{- include "funnel.validate.enum" (list "console.secureCookie" .Values.console.secureCookie (list "auto" "always" "never")) -}}
{{- $stages := list "retrieval" "ranker" "moderation" -}}
{{- range $stage, $_ := (.Values.rollout.stages | default dict) -}}
{{- include "funnel.validate.enum" (list "rollout.stages" $stage $stages) -}}
{{- end -}}
{{- end -}}

{{- define "funnel.validate.ingress" -}}
{{- if and (eq .Values.ingress.mode "haproxy") .Values.serve.grpc.enabled -}}
ingress.mode: "haproxy" with serve.grpc.enabled=true: Ray Serve's high-throughput (HAProxy) mode serves no gRPC; set serve.grpc.enabled=false, or ingress.mode=proxy
{{ end -}}
{{- if and .Values.serve.kubernetesIngress.grpc.enabled (not .Values.serve.grpc.enabled) -}}
serve.kubernetesIngress.grpc.enabled: true with serve.grpc.enabled=false: there is no gRPC port to route to
{{ end -}}
{{- if and .Values.serve.gatewayRoutes.grpc.enabled (not .Values.serve.grpc.enabled) -}}
serve.gatewayRoutes.grpc.enabled: true with serve.grpc.enabled=false: there is no gRPC port to route to
{{ end -}}
{{- range $kind := list "http" "grpc" -}}
{{- $route := get $.Values.serve.gatewayRoutes $kind -}}
{{- if and $route.enabled (not $route.parentRefs) -}}
serve.gatewayRoutes.{{ $kind }}.parentRefs: empty; a route attaches to a Gateway: give at least one {name, namespace}
{{ end -}}
{{- end -}}
{{- end -}}

{{/* a count below its minimum: (list "path" value minimum) */}}
{{- define "funnel.validate.atLeast" -}}
{{- $path := index . 0 -}}
{{- $value := index . 1 -}}
{{- $min := index . 2 -}}
{{- if and (not (kindIs "invalid" $value)) (lt (float64 $value) (float64 $min)) -}}
{{ $path }}: {{ $value }} is below the minimum {{ $min }}
{{ end -}}
{{- end -}}

{{- define "funnel.validate.replicas" -}}
{{- range $name, $d := (.Values.serve.deployments | default dict) -}}
{{- if not (has $name (list "FeedIngress" "ModerationModels" "ShadowScorer" "RolloutController")) -}}
serve.deployments.{{ $name }}: no such Serve deployment; allowed: FeedIngress, ModerationModels, ShadowScorer, RolloutController
{{ end -}}
{{- if $d -}}
{{- if kindIs "string" $d.num_replicas -}}
{{- if ne $d.num_replicas "auto" -}}
serve.deployments.{{ $name }}.num_replicas: {{ $d.num_replicas | toJson }} is not allowed; allowed: an integer >= 1, or "auto" (Serve autoscaling)
{{ end -}}
{{- else -}}
{{- include "funnel.validate.atLeast" (list (printf "serve.deployments.%s.num_replicas" $name) $d.num_replicas 1) -}}
{{- end -}}
{{- if and (eq $name "RolloutController") (hasKey $d "num_replicas") (ne (int $d.num_replicas) 1) -}}
serve.deployments.RolloutController.num_replicas: {{ $d.num_replicas }}; the rollout controller holds the rollout's state and runs as exactly 1 replica
{{ end -}}
{{- end -}}
{{- end -}}
{{- range $i, $g := .Values.ray.workers -}}
{{- $p := printf "ray.workers[%d]" $i -}}
{{- include "funnel.validate.atLeast" (list (printf "%s.replicas" $p) $g.replicas 0) -}}
{{- include "funnel.validate.atLeast" (list (printf "%s.minReplicas" $p) $g.minReplicas 0) -}}
{{- include "funnel.validate.atLeast" (list (printf "%s.maxReplicas" $p) $g.maxReplicas 1) -}}
{{- if and (ge (int $g.replicas) 0) (or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas))) -}}
{{ $p }}.replicas: {{ $g.replicas }} is outside [minReplicas {{ $g.minReplicas }}, maxReplicas {{ $g.maxReplicas }}]
{{ end -}}
{{- end -}}
{{- include "funnel.validate.atLeast" (list "triton.replicas" .Values.triton.replicas 1) -}}
{{- if .Values.triton.autoscaling.enabled -}}
{{- include "funnel.validate.atLeast" (list "triton.autoscaling.minReplicas" .Values.triton.autoscaling.minReplicas 1) -}}
{{- if lt (int .Values.triton.autoscaling.maxReplicas) (int .Values.triton.autoscaling.minReplicas) -}}
triton.autoscaling.maxReplicas: {{ .Values.triton.autoscaling.maxReplicas }} is below triton.autoscaling.minReplicas ({{ .Values.triton.autoscaling.minReplicas }})
{{ end -}}
{{- end -}}
{{- include "funnel.validate.atLeast" (list "training.workers.replicas" .Values.training.workers.replicas 0) -}}
{{- end -}}

{{/* a GPU request: (list "path" resources resourceName "switch") -> message when fewer than 1 */}}
{{- define "funnel.validate.gpuLimit" -}}
{{- $path := index . 0 -}}
{{- $resources := index . 1 | default dict -}}
{{- $name := index . 2 -}}
{{- $switch := index . 3 -}}
{{- $limits := $resources.limits | default dict -}}
{{- $count := get $limits $name -}}
{{- if or (kindIs "invalid" $count) (eq (toString $count) "") (lt (atoi (toString $count)) 1) -}}
{{ $path }}.limits.{{ $name }}: {{ $count | default "not set" }}; {{ $switch }}=true needs at least 1 GPU there (or set {{ $switch }}=false)
{{ end -}}
{{- end -}}

{{- define "funnel.validate.gpu" -}}
{{- if .Values.triton.gpu.enabled -}}
{{- include "funnel.validate.gpuLimit" (list "triton.resources" .Values.triton.resources .Values.triton.gpu.resourceName "triton.gpu.enabled") -}}
{{- end -}}
{{- $device := dig "triton" "device" "" (.Values.serve.args | default dict) -}}
{{- if and (eq $device "cuda") (not .Values.triton.gpu.enabled) -}}
serve.args.triton.device: "cuda" with triton.gpu.enabled=false: the Triton pods get no GPU; set triton.gpu.enabled=true (and its GPU limit)
{{ end -}}
{{- if and .Values.training.enabled .Values.training.gpu.enabled -}}
{{- include "funnel.validate.gpuLimit" (list "training.workers.resources" .Values.training.workers.resources .Values.training.gpu.resourceName "training.gpu.enabled") -}}
{{- end -}}
{{- end -}}

{{- define "funnel.validate.rollout" -}}
{{- $tritonReplicas := .Values.triton.replicas | int -}}
{{- if .Values.triton.autoscaling.enabled -}}
{{- $tritonReplicas = .Values.triton.autoscaling.maxReplicas | int -}}
{{- end -}}
{{- range $stage, $cfg := (.Values.rollout.stages | default dict) -}}
{{- $total := 0.0 -}}
{{- $weights := list -}}
{{- range $v := ($cfg.variants | default list) -}}
{{- $total = addf $total (float64 $v.weight) -}}
{{- $weights = append $weights $v.weight -}}
{{- end -}}
{{- if or (lt $total 99.999999) (gt $total 100.000001) -}}
rollout.stages.{{ $stage }}.variants: weights {{ $weights | toJson }} sum to {{ $total }}; a stage's variant weights must sum to 100
{{ end -}}
{{- if eq $stage "ranker" -}}
{{- $versions := list -}}
{{- range $v := concat ($cfg.variants | default list) ($cfg.shadows | default list) -}}
{{- $versions = append $versions $v.bundle_version -}}
{{- end -}}
{{- if and (gt (len (uniq $versions)) 1) (gt $tritonReplicas 1) -}}
rollout.stages.ranker: a ranker canary or shadow ({{ uniq $versions | join ", " }}) with up to {{ $tritonReplicas }} Triton replicas: the rollout controller loads other ranker versions into the one Triton pod its connection reaches; set triton.replicas=1 (and triton.autoscaling.enabled=false) during a ranker rollout
{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "funnel.validate.storage" -}}
{{- if not .Values.storage.data.enabled -}}
{{- if not .Values.storage.impressionsUrl -}}
storage.impressionsUrl: empty with storage.data.enabled=false: the impression log needs either the data volume or an object-store URL
{{ end -}}
{{- if and .Values.drift.enabled (not .Values.storage.driftReportsUrl) -}}
storage.driftReportsUrl: empty with storage.data.enabled=false and drift.enabled=true: the drift reports need either the data volume or an object-store URL
{{ end -}}
{{- end -}}
{{- end -}}


{{/* the model registry: where it is, and a version to pull (docs/registry.md) */}}
{{- define "funnel.validate.registry" -}}
{{- with .Values.registry -}}
{{- if .enabled -}}
{{- if eq $.Values.bundle.version "latest" -}}
bundle.version: "latest" with registry.enabled=true: each pod pulls one version from the registry, and the registry has no moving "latest"; name a version it holds (`funnel bundle list`)
{{ end -}}
{{- if not .existingSecret -}}
{{- if not .url -}}
registry.url: empty with registry.enabled=true and no registry.existingSecret: give the object store's URL (s3://bucket/prefix, any fsspec URL)
{{ else if not (contains "://" .url) -}}
registry.url: {{ .url | toJson }} is not an object-store URL; give s3://bucket/prefix (or another fsspec URL): a local path would be each pod's own
{{ end -}}
{{- if not .databaseUrl -}}
registry.databaseUrl: empty with registry.enabled=true and no registry.existingSecret: give the index database's URL (postgresql://USER:PASSWORD@HOST:5432/DB)
{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The security contexts every pod and container gets: root, privilege and privilege escalation
are refused (the image runs as uid 1000 and needs none of them).
*/}}
{{- define "funnel.validate.security" -}}
{{- range $key := list "podSecurityContext" "containerSecurityContext" -}}
{{- $sc := get $.Values $key | default dict -}}
{{- if and (hasKey $sc "runAsUser") (eq (toString $sc.runAsUser) "0") -}}
{{ $key }}.runAsUser: 0 (root) is not allowed; the image runs as uid 1000
{{ end -}}
{{- if and (hasKey $sc "runAsNonRoot") (ne (toString $sc.runAsNonRoot) "true") -}}
{{ $key }}.runAsNonRoot: {{ $sc.runAsNonRoot | toJson }} is not allowed; allowed: true
{{ end -}}
{{- if and (hasKey $sc "privileged") (ne (toString $sc.privileged) "false") -}}
{{ $key }}.privileged: {{ $sc.privileged | toJson }} is not allowed; allowed: false
{{ end -}}
{{- if and (hasKey $sc "allowPrivilegeEscalation") (ne (toString $sc.allowPrivilegeEscalation) "false") -}}
{{ $key }}.allowPrivilegeEscalation: {{ $sc.allowPrivilegeEscalation | toJson }} is not allowed; allowed: false
{{ end -}}
{{- end -}}
{{- end -}}

{{/* extraEnv: [{name, value} or {name, valueFrom}], names as a shell would take them */}}
{{- define "funnel.validate.extraEnv" -}}
{{- range $i, $e := (.Values.extraEnv | default list) -}}
{{- if not (kindIs "map" $e) -}}
extraEnv[{{ $i }}]: {{ $e | toJson }} is not allowed; allowed: {name: NAME, value: "..."} or {name: NAME, valueFrom: {...}}
{{ else -}}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" (toString ($e.name | default ""))) -}}
extraEnv[{{ $i }}].name: {{ $e.name | toJson }} is not allowed; allowed: letters, digits and _, not starting with a digit
{{ end -}}
{{- if eq (len (pick $e "value" "valueFrom")) 0 -}}
extraEnv[{{ $i }}]: {{ $e.name | toJson }} has neither value nor valueFrom; give one
{{ else if eq (len (pick $e "value" "valueFrom")) 2 -}}
extraEnv[{{ $i }}]: {{ $e.name | toJson }} has both value and valueFrom; give one
{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* the console's identity header: a header name, as serve/config.py ConsoleSettings takes it */}}
{{- define "funnel.validate.console" -}}
{{- with .Values.console.identityHeader -}}
{{- if not (regexMatch `^[A-Za-z0-9-]{1,64}$` (toString .)) -}}
console.identityHeader: {{ . | toJson }} is not a header name: 1 to 64 of A-Z a-z 0-9 -
{{ end -}}
{{- end -}}
{{- end -}}

{{/* a PodDisruptionBudget takes minAvailable or maxUnavailable, not both */}}
{{- define "funnel.validate.disruptionBudgets" -}}
{{- range $path, $pdb := dict "ray.podDisruptionBudget" .Values.ray.podDisruptionBudget "triton.podDisruptionBudget" .Values.triton.podDisruptionBudget -}}
{{- if and $pdb $pdb.enabled -}}
{{- $set := list -}}
{{- range $k := list "minAvailable" "maxUnavailable" -}}
{{- if and (hasKey $pdb $k) (ne (toString (get $pdb $k)) "") (not (kindIs "invalid" (get $pdb $k))) -}}
{{- $set = append $set $k -}}
{{- end -}}
{{- end -}}
{{- if ne (len $set) 1 -}}
{{ $path }}: {{ if $set }}both {{ join " and " $set }} are set{{ else }}neither minAvailable nor maxUnavailable is set{{ end }}; set exactly one (the other "")
{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The KubeRay CRDs, when Helm talks to a cluster. `helm install` / `helm upgrade` (and
`--dry-run=server`) read the API server's discovery, which lists every served kind
("apps/v1/Deployment"); without the CRDs the install would fail later, on "no matches for
kind RayService". `helm template` and `helm lint` without a cluster get Helm's built-in list,
which names group/versions only ("apps/v1", never "apps/v1/Deployment"): the check cannot know
and stays out of the way, so CI renders without --api-versions. `helm template
--api-versions ray.io/v1/RayService` states the CRDs are there; kuberay.checkCRDs=false turns
the check off (e.g. KubeRay installed in the same pipeline, after the render).
*/}}
{{- define "funnel.validate.kuberayCRDs" -}}
{{- $api := .Capabilities.APIVersions -}}
{{- if and .Values.kuberay.checkCRDs ($api.Has "apps/v1/Deployment") -}}
{{- $missing := list -}}
{{- if not ($api.Has "ray.io/v1/RayService") -}}
{{- $missing = append $missing "ray.io/v1 RayService" -}}
{{- end -}}
{{- if and .Values.training.enabled (not ($api.Has "ray.io/v1/RayJob")) -}}
{{- $missing = append $missing "ray.io/v1 RayJob (training.enabled=true)" -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "\n\nKUBERAY: this cluster does not serve %s. The chart needs the KubeRay operator (1.6 or later) and its CRDs; install them first, e.g.\n  helm repo add kuberay https://ray-project.github.io/kuberay-helm/\n  helm install kuberay-operator kuberay/kuberay-operator -n kuberay-system --create-namespace\n(https://docs.ray.io/en/latest/cluster/kubernetes/getting-started/kuberay-operator-installation.html). To skip this check: kuberay.checkCRDs=false." (join " and " $missing)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* the image reference's parts and the Ray version, as values.schema.json's patterns */}}
{{- define "funnel.validate.image" -}}
{{- $img := .Values.image -}}
{{- $host := `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:[0-9]+)?` -}}
{{- $component := `[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*` -}}
{{- $tag := `^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$` -}}
{{- $digest := `^sha256:[a-f0-9]{64}$` -}}
{{- if and $img.registry (not (regexMatch (printf "^%s$" $host) (toString $img.registry))) -}}
image.registry: {{ $img.registry | toJson }} is not a registry host[:port] (no scheme, no path)
{{ end -}}
{{- if not (regexMatch (printf "^(%s/)?%s(/%s)*$" $host $component $component) (toString $img.repository)) -}}
image.repository: {{ $img.repository | toJson }} is not a repository: lowercase path components (a-z, 0-9, . _ -) joined by /, optionally after a registry host
{{ end -}}
{{- range $key := list "tag" "gpuTag" -}}
{{- $v := get $img $key -}}
{{- if and $v (not (regexMatch $tag (toString $v))) -}}
image.{{ $key }}: {{ $v | toJson }} is not a tag: up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -
{{ end -}}
{{- end -}}
{{- range $key := list "digest" "gpuDigest" -}}
{{- $v := get $img $key -}}
{{- if and $v (not (regexMatch $digest (toString $v))) -}}
image.{{ $key }}: {{ $v | toJson }} is not a digest: sha256:<64 lowercase hex>
{{ end -}}
{{- end -}}
{{- if not (regexMatch `^[0-9]+\.[0-9]+\.[0-9]+$` (toString .Values.ray.version)) -}}
ray.version: {{ .Values.ray.version | toJson }} is not a Ray release (MAJOR.MINOR.PATCH, e.g. "2.60.0")
{{ end -}}
{{- end -}}

{{/*
KubeRay binds the autoscaler's Role to the head's ServiceAccount (templates/_ray.tpl): never to
the namespace's "default" one, which every pod that names none runs as.
*/}}
{{- define "funnel.validate.autoscaler" -}}
{{- if and .Values.ray.autoscaling.enabled (eq (include "funnel.serviceAccountName" .) "default") -}}
serviceAccount.name: "default" with ray.autoscaling.enabled=true: KubeRay would bind the autoscaler's Role (pods, rayclusters) to the namespace's default ServiceAccount, which every pod that names none runs as; set serviceAccount.create=true, or name a ServiceAccount of its own
{{ end -}}
{{- end -}}
