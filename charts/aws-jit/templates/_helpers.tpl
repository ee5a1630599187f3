{{/* The chart's name. */}}
{{- define "aws-jit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: every resource's name starts with it, cluster-scoped ones
(ClusterRole, bindings, admission policies) included, so two releases never collide.
*/}}
{{- define "aws-jit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aws-jit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aws-jit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aws-jit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aws-jit.labels" -}}
helm.sh/chart: {{ include "aws-jit.chart" . }}
{{ include "aws-jit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aws-jit
{{- end }}

{{- define "aws-jit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aws-jit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Values added after the first release default here too, so `helm upgrade --reuse-values`
from an older release (which keeps the old values, without the new keys) still renders.
*/}}
{{- define "aws-jit.relayServiceAccount" -}}
{{- toYaml (.Values.relay.serviceAccount | default (dict "create" true "name" "" "annotations" (dict))) }}
{{- end }}

{{/* The relay's ServiceAccount: its own, never the controller's. */}}
{{- define "aws-jit.relayServiceAccountName" -}}
{{- $sa := include "aws-jit.relayServiceAccount" . | fromYaml }}
{{- if $sa.create }}
{{- default (printf "%s-relay" (include "aws-jit.fullname" .)) $sa.name }}
{{- else }}
{{- required "relay.serviceAccount.name is required when relay.serviceAccount.create is false" $sa.name }}
{{- end }}
{{- end }}

{{/* A ServiceAccount's username, as the apiserver authenticates it. */}}
{{- define "aws-jit.saUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .namespace .name }}
{{- end }}

{{- define "aws-jit.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* AWS settings shared by the controller and the drain Job. */}}
{{- define "aws-jit.awsEnv" -}}
- name: AWS_REGION
  value: {{ required "aws.region is required (the CloudFormation stack's region)" .Values.aws.region | quote }}
- name: AWS_JIT_STATE_MACHINE_ARN
  value: {{ required "aws.stateMachineArn is required (template output StateMachineArn)" .Values.aws.stateMachineArn | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- with .Values.controller.watchNamespace }}
- name: AWS_JIT_WATCH_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- end }}
