{{/*
The Serve config the RayService deploys (serveConfigV2) and Triton reads.

It is serve/configs/local.yaml, the file `make run` serves, read through the symlink
files/serve-config.yaml. A symlink rather than a copy, so the two cannot drift apart: Helm's
loader follows links inside a chart directory and `helm package` stores the linked file's
content, so a packaged chart carries it too (tests/unit/charts checks both ways). Only what
differs in a cluster is overridden here:
- the proxies listen on 0.0.0.0 (the HTTP port; gRPC listens on all interfaces anyway) and run
  where serve.proxyLocation says; gRPC is dropped with serve.grpc.enabled=false;
- args: the bundle under the bundle volume, Triton's Service as the ranker's address, Triton's
  own ports and device, the impression log's URL (the environment's FUNNEL_IMPRESSIONS_URL,
  set in the pods, says the same), a SQLite file in /tmp for the review queue when no database
  Secret is set (FUNNEL_REVIEW_DATABASE_URL wins when it is), the rollout ConfigMap's file
  as the start-up rollout, and the console's switch, cookie flag and identity header (its
  session secret and the drift reports' URL are in the pods' environment); then the user's
  serve.args, which win;
- each deployment's keys from serve.deployments (replicas, CPUs, ...; an autoscaling_config
  replaces an integer num_replicas, which Ray refuses beside it); a deployment the app
  leaves out with these args (ModerationModels with moderation.enabled false, ShadowScorer
  with rollout.shadow_scorer false) is left out of the config too;
- RolloutController's user_config carries the rollout, so a rollout change is a user_config
  change that Serve applies in place (reconfigure), without redeploying the app. The start-up
  file keeps the same path whatever the rollout, so it never changes the app's args.
Built with fromYaml / mergeOverwrite / toYaml on data: nothing from the file goes through tpl.
*/}}

{{- define "funnel.rolloutConfig" -}}
{{- toYaml (dict "salt" .Values.rollout.salt "stages" (.Values.rollout.stages | default dict)) -}}
{{- end -}}

{{- define "funnel.clusterArgs" -}}
{{- $paths := include "funnel.paths" . | fromYaml -}}
{{- $ranker := printf "%s:%d" (include "funnel.tritonHost" .) (.Values.triton.ports.grpc | int) -}}
{{- $triton := dict
      "host" "0.0.0.0"
      "http_port" (.Values.triton.ports.http | int)
      "grpc_port" (.Values.triton.ports.grpc | int)
      "metrics_port" (.Values.triton.ports.metrics | int)
      "device" (ternary "cuda" "cpu" .Values.triton.gpu.enabled) -}}
{{- toYaml (dict
      "bundle" (include "funnel.bundlePath" .)
      "feed" (dict "ranker" (dict "url" $ranker))
      "triton" $triton
      "review" (dict "database_url" "sqlite:////tmp/funnel-review.sqlite3"
                     "spool_path" "/tmp/funnel-review-spool.sqlite3")
      "impressions" (dict "url" (include "funnel.impressionsUrl" .)
                          "spool_dir" "/tmp/funnel-spool")
      "rollout" (dict "config" (printf "%s/rollout.yaml" $paths.rolloutDir))
      "console" (include "funnel.clusterConsoleArgs" . | fromYaml)) -}}
{{- end -}}

{{/* args.console from console.*; the session secret and the drift reports come from the
environment (FUNNEL_CONSOLE_SECRET, FUNNEL_DRIFT_REPORTS_URL) */}}
{{- define "funnel.clusterConsoleArgs" -}}
{{- $console := dict "enabled" .Values.console.enabled "secure_cookie" .Values.console.secureCookie -}}
{{- with .Values.console.identityHeader -}}
{{- $_ := set $console "identity_header" . -}}
{{- end -}}
{{- toYaml $console -}}
{{- end -}}

{{/* the application's args: the local config's, the cluster's, then serve.args */}}
{{- define "funnel.serveArgs" -}}
{{- $doc := .Files.Get "files/serve-config.yaml" | fromYaml -}}
{{- $app := index $doc.applications 0 -}}
{{- $args := mergeOverwrite (default (dict) $app.args) (include "funnel.clusterArgs" . | fromYaml) (deepCopy (.Values.serve.args | default dict)) -}}
{{- toYaml $args -}}
{{- end -}}

{{- define "funnel.serveConfig" -}}
{{- $doc := .Files.Get "files/serve-config.yaml" | fromYaml -}}
{{- $_ := set $doc "proxy_location" .Values.serve.proxyLocation -}}
{{- $_ := set $doc "http_options" (mergeOverwrite (default (dict) $doc.http_options) (dict "host" "0.0.0.0" "port" (.Values.serve.httpPort | int))) -}}
{{- if .Values.serve.grpc.enabled -}}
{{- $_ := set $doc "grpc_options" (mergeOverwrite (default (dict) $doc.grpc_options) (dict "port" (.Values.serve.grpc.port | int))) -}}
{{- else -}}
{{- $_ := unset $doc "grpc_options" -}}
{{- end -}}
{{- $app := index $doc.applications 0 -}}
{{- $args := include "funnel.serveArgs" . | fromYaml -}}
{{- $_ := set $app "args" $args -}}
{{- /* deployments the app leaves out with these args (Serve refuses options for them) */ -}}
{{- $absent := list -}}
{{- if eq (toString (dig "moderation" "enabled" true $args)) "false" -}}
{{- $absent = append $absent "ModerationModels" -}}
{{- end -}}
{{- if eq (toString (dig "rollout" "shadow_scorer" true $args)) "false" -}}
{{- $absent = append $absent "ShadowScorer" -}}
{{- end -}}
{{- $deployments := list -}}
{{- range $d := $app.deployments -}}
{{- if not (has $d.name $absent) -}}
{{- $d = mergeOverwrite $d (deepCopy (get ($.Values.serve.deployments | default dict) $d.name | default dict)) -}}
{{- /* Serve autoscaling: Ray refuses an integer num_replicas beside an autoscaling_config
(ray.serve.schema.DeploymentSchema); the config's bounds replace it. "auto" stays: Ray reads it
as autoscaling, with the given autoscaling_config or Serve's defaults. */ -}}
{{- if and $d.autoscaling_config (ne (toString $d.num_replicas) "auto") -}}
{{- $_ := unset $d "num_replicas" -}}
{{- end -}}
{{- if eq $d.name "RolloutController" -}}
{{- $_ := set $d "user_config" (dict "rollout" (include "funnel.rolloutConfig" $ | fromYaml)) -}}
{{- end -}}
{{- $deployments = append $deployments $d -}}
{{- end -}}
{{- end -}}
{{- $_ := set $app "deployments" $deployments -}}
{{- toYaml $doc -}}
{{- end -}}
