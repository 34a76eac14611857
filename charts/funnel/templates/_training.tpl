{{/* the pods of the training RayJob (templates/training-rayjob.yaml) */}}

{{- define "funnel.trainingPodCommon" -}}
serviceAccountName: {{ include "funnel.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with include "funnel.imagePullSecrets" . }}{{ . | nindent 0 }}{{- end }}
securityContext:
  {{- include "funnel.podSecurityContext" . | nindent 2 }}
volumes:
  {{- include "funnel.scratchVolumes" . | nindent 2 }}
  {{- include "funnel.bundlesClaimVolume" . | nindent 2 }}
{{- end -}}
{{- define "funnel.trainingContainerCommon" -}}
imagePullPolicy: {{ .Values.image.pullPolicy }}
env:
  {{- include "funnel.baseEnv" . | nindent 2 }}
  {{- with include "funnel.registryEnv" . }}{{ . | nindent 2 }}{{- end }}
securityContext:
  {{- include "funnel.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  {{- include "funnel.scratchMounts" . | nindent 2 }}
  - name: bundles
    mountPath: {{ (include "funnel.paths" . | fromYaml).bundles }}
{{- end -}}
