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
{{- $stages := list "retrieval" "ranker" "moderation" -}}
{{- range $stage, $_ := (.Values.rollout.stages | default dict) -}}
{{- include "funnel.validate.enum" (list "rollout.stages" $stage $stages) -}}
{{- end -}}
{{- end -}}

{{- define "funnel.validate.ingress" -}}
{{- if and (eq .Values.ingress.mode "haproxy") .Values.serve.grpc.enabled -}}
ingress.mode: "haproxy" with serve.grpc.enabled=true: Ray Serve's high-throughput (HAProxy) mode serves no gRPC; set serve.grpc.enabled=false, or ingress.mode=proxy
{{ end -}}
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
{{- include "funnel.validate.atLeast" (list (printf "serve.deployments.%s.num_replicas" $name) $d.num_replicas 1) -}}
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
