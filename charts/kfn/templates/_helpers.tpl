{{/* Names and labels shared by every template. */}}

{{- define "kfn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kfn.fullname" -}}
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

{{/* "<fullname>-<component>", for the objects of one component. Call with (list . "gateway"). */}}
{{- define "kfn.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "kfn.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name is per component ("kfn-gateway"): the operator's autoscaler finds the gateway replicas to
scrape by the EndpointSlices labelled app.kubernetes.io/name=kfn-gateway (copied from the Service).
*/}}
{{- define "kfn.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "kfn.name" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kfn.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{ include "kfn.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: kfn
{{- end -}}

{{- define "kfn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Namespaces where a component gets a Role when watchNamespaces is a list (call with (list . "operator")):
the watched ones, and for the operator also the release's own, where its Leases live and where it
finds the gateway replicas to scrape.
*/}}
{{- define "kfn.roleNamespaces" -}}
{{- $root := index . 0 -}}
{{- /* Both components also act in the release namespace: the operator's Lease and the gateway
replicas it scrapes are there, and the gateway's admin keys Secret. */ -}}
{{- $namespaces := list $root.Release.Namespace -}}
{{- range $root.Values.watchNamespaces -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- $namespaces | uniq | toJson -}}
{{- end -}}

{{/*
The Pod Security "restricted" profile, for every pod of the chart. The uid is the images' USER;
numeric so the kubelet can enforce runAsNonRoot without reading /etc/passwd.
*/}}
{{- define "kfn.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kfn.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The RBAC rules of one component ("operator" or "gateway") and scope, from files/rbac-rules.yaml. */}}
{{- define "kfn.rbacRules" -}}
{{- $root := index . 0 -}}
{{- $rules := $root.Files.Get "files/rbac-rules.yaml" | fromYaml -}}
{{- index $rules (index . 1) (index . 2) | toYaml -}}
{{- end -}}

{{/*
The NATS server of asynchronous invocations, as KFN_NATS_URL gives it to the gateway and the
operator: async.nats.url when set, else the client Service of the StatefulSet this chart runs
(async.nats.install), else nothing (no async invocations, no schedules).
*/}}
{{- define "kfn.nats.runs" -}}
{{- if and .Values.async.nats.install (not .Values.async.nats.url) }}true{{ end -}}
{{- end -}}

{{- define "kfn.nats.url" -}}
{{- if .Values.async.nats.url -}}
{{- .Values.async.nats.url -}}
{{- else if include "kfn.nats.runs" . -}}
{{- printf "nats://%s.%s.svc:4222" (include "kfn.componentName" (list . "nats")) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
Requirements built once need the archive store, which is the gateway's over JetStream: on ("true")
when there is a NATS server. The store and the operator share a signing key, the Secret
<fullname>-archive-key, mounted at kfn.archive.keyDir.
*/}}
{{- define "kfn.archive.enabled" -}}
{{- if include "kfn.nats.url" . }}true{{ end -}}
{{- end -}}

{{- define "kfn.archive.secretName" -}}
{{- .Values.build.existingSecret | default (printf "%s-archive-key" (include "kfn.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{- define "kfn.archive.keyDir" -}}/etc/kfn/archive{{- end -}}

{{/* The archive store as function pods reach it: the gateway's Service. */}}
{{- define "kfn.archive.url" -}}
http://{{ include "kfn.componentName" (list . "gateway") }}.{{ .Release.Namespace }}.svc:{{ .Values.gateway.service.port }}
{{- end -}}

{{/*
Warm pools: on ("true") when pool.size is above 0. The gateway (which specialises pool pods) and
the operator (which gives each namespace's pool pods their key) share the pool key, the Secret
<fullname>-pool-key, mounted at kfn.pool.keyDir.
*/}}
{{- define "kfn.pool.enabled" -}}
{{- if gt (int .Values.pool.size) 0 }}true{{ end -}}
{{- end -}}

{{- define "kfn.pool.secretName" -}}
{{- .Values.pool.existingSecret | default (printf "%s-pool-key" (include "kfn.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{- define "kfn.pool.keyDir" -}}/etc/kfn/pool{{- end -}}

{{/* A size in bytes from 256Mi, 1Gi, 512Ki or a plain number (the schema allows only these). */}}
{{- define "kfn.bytes" -}}
{{- $v := toString . -}}
{{- if hasSuffix "Gi" $v -}}{{ mul (trimSuffix "Gi" $v | int64) 1073741824 }}
{{- else if hasSuffix "Mi" $v -}}{{ mul (trimSuffix "Mi" $v | int64) 1048576 }}
{{- else if hasSuffix "Ki" $v -}}{{ mul (trimSuffix "Ki" $v | int64) 1024 }}
{{- else -}}{{ $v | int64 }}{{- end -}}
{{- end -}}

{{/*
The platform's NATS credentials: the user async.nats.auth.user, its password in the Secret
kfn.nats.auth.secretName (entry "password"). On ("true") for the chart's server with
async.nats.auth.enabled, and for a server of yours (async.nats.url) whose Secret is named.
*/}}
{{- define "kfn.nats.auth.enabled" -}}
{{- $auth := .Values.async.nats.auth -}}
{{- if include "kfn.nats.runs" . -}}
{{- if $auth.enabled }}true{{ end -}}
{{- else if and .Values.async.nats.url $auth.existingSecret -}}true
{{- end -}}
{{- end -}}

{{- define "kfn.nats.auth.secretName" -}}
{{- .Values.async.nats.auth.existingSecret | default (printf "%s-nats-auth" (include "kfn.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{/*
The KFN_NATS_URL entry of a container's env, when there is a NATS server, and the credentials
(KFN_NATS_USER, KFN_NATS_PASSWORD from the Secret) that kfn puts into it (kfn.core.natsurl).
*/}}
{{- define "kfn.nats.env" -}}
{{- with include "kfn.nats.url" . }}
- name: KFN_NATS_URL
  value: {{ . | quote }}
{{- end }}
{{- if include "kfn.nats.auth.enabled" . }}
- name: KFN_NATS_USER
  value: {{ .Values.async.nats.auth.user | quote }}
- name: KFN_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kfn.nats.auth.secretName" . }}
      key: password
{{- end }}
{{- end -}}

{{/*
The entries the install hook (templates/secrets-hook.yaml) generates, as `kfn secrets ensure
--secret NAME:KEY:FORMAT` takes them: each Secret the chart needs and the values do not name.
A JSON list (empty: no hook).
*/}}
{{- define "kfn.secrets.generated" -}}
{{- $entries := list -}}
{{- $auth := .Values.gateway.auth -}}
{{- if and $auth.system (not $auth.existingSecret) (not $auth.adminKey) -}}
{{- $entries = append $entries "kfn-admin-keys:admin:alnum" -}}
{{- end -}}
{{- if and (include "kfn.archive.enabled" .) (not .Values.build.existingSecret) -}}
{{- $entries = append $entries (printf "%s:key:bytes" (include "kfn.archive.secretName" .)) -}}
{{- end -}}
{{- if and (include "kfn.pool.enabled" .) (not .Values.pool.existingSecret) -}}
{{- $entries = append $entries (printf "%s:key:bytes" (include "kfn.pool.secretName" .)) -}}
{{- end -}}
{{- if and (include "kfn.nats.runs" .) .Values.async.nats.auth.enabled (not .Values.async.nats.auth.existingSecret) -}}
{{- $entries = append $entries (printf "%s:password:letters" (include "kfn.nats.auth.secretName" .)) -}}
{{- end -}}
{{- $entries | toJson -}}
{{- end -}}

{{/* functions.imagePullSecrets as $KFN_IMAGE_PULL_SECRETS reads them: names separated by spaces. */}}
{{- define "kfn.functions.pullSecrets" -}}
{{- $names := list -}}
{{- range .Values.functions.imagePullSecrets -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join " " $names -}}
{{- end -}}

{{/*
$KFN_NETWORK_POLICY: who may reach function pods, for the policy the operator keeps in each function
namespace (kfn_operator.network_policies): the gateway's pods, by their labels and namespace.
*/}}
{{- define "kfn.functions.networkPolicy" -}}
{{- $labels := include "kfn.selectorLabels" (list . "gateway") | fromYaml -}}
{{- dict "gatewayNamespace" .Release.Namespace "gatewayLabels" $labels "extraFrom" .Values.networkPolicy.functions.extraFrom | toJson -}}
{{- end -}}
