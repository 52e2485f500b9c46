{{/*
Names, labels and the SGLang command line shared by the leader and worker pod templates.
*/}}

{{- define "keye-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Full name. Kept to 40 characters: LWS names pods <name>-<group>-<index> and the headless
Service <name>, and all of them must stay valid DNS labels (63 characters).
*/}}
{{- define "keye-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keye-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keye-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keye-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keye-serve.labels" -}}
helm.sh/chart: {{ include "keye-serve.chart" . }}
{{ include "keye-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "keye-serve.apiKeySecret" -}}
{{- default (printf "%s-api-key" (include "keye-serve.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{/* The directory SGLang loads: <mountPath>/<name>. */}}
{{- define "keye-serve.modelPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.name }}
{{- end }}

{{/* metrics are needed whenever a ServiceMonitor scrapes them. */}}
{{- define "keye-serve.metricsEnabled" -}}
{{- if or .Values.sglang.enableMetrics .Values.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/*
CUDA-graph batch flag: SGLang renamed it in 0.5.20 (the old spelling is rejected there), so
the spelling follows the SGLang version pinned in the image.
*/}}
{{- define "keye-serve.cudaGraphFlag" -}}
{{- if semverCompare ">=0.5.20-0" (toString .Values.sglang.version) }}--cuda-graph-max-bs-decode{{ else }}--cuda-graph-max-bs{{ end }}
{{- end }}

{{/*
`python3 -m sglang.launch_server ...` as a YAML list. $(LWS_*) references are expanded by the
kubelet from the env LWS injects into every container, so leader and workers share one template.
Flag order follows the published two-node command.
*/}}
{{- define "keye-serve.sglangArgs" -}}
{{- $s := .Values.sglang -}}
- python3
- -m
- sglang.launch_server
- --model-path
- {{ include "keye-serve.modelPath" . | quote }}
- --host
- {{ $s.host | quote }}
- --port
- {{ $s.port | int | quote }}
- --tp-size
- {{ $s.tp | int | quote }}
{{- if gt (int $s.dp) 1 }}
- --dp-size
- {{ $s.dp | int | quote }}
{{- end }}
{{- if gt (int $s.ep) 1 }}
- --ep-size
- {{ $s.ep | int | quote }}
{{- end }}
- --nnodes
- $(LWS_GROUP_SIZE)
- --node-rank
- $(LWS_WORKER_INDEX)
- --dist-init-addr
- {{ printf "$(LWS_LEADER_ADDRESS):%d" (int $s.distInitPort) | quote }}
{{- if $s.trustRemoteCode }}
- --trust-remote-code
{{- end }}
{{- with $s.mmAttentionBackend }}
- --mm-attention-backend
- {{ . | quote }}
{{- end }}
{{- with $s.attentionBackend }}
- --attention-backend
- {{ . | quote }}
{{- end }}
{{- if $s.disableRadixCache }}
- --disable-radix-cache
{{- end }}
- --mem-fraction-static
- {{ $s.memFractionStatic | toString | quote }}
{{- if gt (int $s.cudaGraphMaxBs) 0 }}
- {{ include "keye-serve.cudaGraphFlag" . }}
- {{ $s.cudaGraphMaxBs | int | quote }}
{{- end }}
{{- if $s.modelLoaderExtraConfig }}
- --model-loader-extra-config
- {{ $s.modelLoaderExtraConfig | toJson | quote }}
{{- end }}
{{- if $s.enableDpAttention }}
- --enable-dp-attention
{{- end }}
{{- with $s.moeA2ABackend }}
- --moe-a2a-backend
- {{ . | quote }}
{{- end }}
{{- if include "keye-serve.metricsEnabled" . }}
- --enable-metrics
{{- end }}
{{- with $s.servedModelName }}
- --served-model-name
- {{ . | quote }}
{{- end }}
{{- if .Values.apiKey.enabled }}
- --api-key
- $(SGLANG_API_KEY)
{{- end }}
{{- range $s.extraArgs }}
- {{ . | toString | quote }}
{{- end }}
{{- end }}

{{/*
Pod spec of one role ("leader" or "worker"). Called with (dict "root" $ "role" "leader").
*/}}
{{- define "keye-serve.podSpec" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $leader := eq .role "leader" -}}
{{- if $v.network.hostNetwork }}
hostNetwork: true
# Host-network pods still need cluster DNS for the leader's name.
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
automountServiceAccountToken: false
# Service links would add one env var per Service in the namespace; SGLang needs none of them.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | int }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $userAffinity := $v.affinity | default dict }}
{{- if or $v.spreadGroupAcrossNodes $userAffinity }}
affinity:
  {{- with omit $userAffinity "podAntiAffinity" }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- $userAnti := get $userAffinity "podAntiAffinity" | default dict }}
  {{- if or $v.spreadGroupAcrossNodes $userAnti }}
  podAntiAffinity:
    {{- $required := get $userAnti "requiredDuringSchedulingIgnoredDuringExecution" | default list }}
    {{- if or $v.spreadGroupAcrossNodes $required }}
    requiredDuringSchedulingIgnoredDuringExecution:
      {{- if $v.spreadGroupAcrossNodes }}
      # One pod of a group per node. matchLabelKeys narrows the rule to the pod's own group
      # (group-key label set by LWS); clusters without MatchLabelKeysInPodAffinity (< 1.31)
      # ignore it and keep every pod of the set on its own node, which is still correct.
      - labelSelector:
          matchLabels:
            {{- include "keye-serve.selectorLabels" $root | nindent 12 }}
          # Only serving pods: the helm test pod carries the same name/instance labels.
          matchExpressions:
            - key: app.kubernetes.io/component
              operator: In
              values: [leader, worker]
        matchLabelKeys:
          - leaderworkerset.sigs.k8s.io/group-key
        topologyKey: kubernetes.io/hostname
      {{- end }}
      {{- with $required }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- end }}
    {{- with get $userAnti "preferredDuringSchedulingIgnoredDuringExecution" }}
    preferredDuringSchedulingIgnoredDuringExecution:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  {{- end }}
{{- end }}
{{- if eq $v.model.source "s3" }}
initContainers:
  # Every node needs its own copy; the marker file written after a complete download lets a
  # restarted container (or, with the hostPath cache, a recreated pod) skip it.
  - name: fetch-model
    image: {{ printf "%s:%s" $v.image.repository $v.image.tag | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    command:
      - python3
      - -m
      - keye_model.serve.fetch
      - --uri
      - {{ $v.model.s3.uri | quote }}
      - --dest
      - {{ include "keye-serve.modelPath" $root | quote }}
    {{- if or $v.model.s3.endpoint $v.model.s3.credentialsSecret }}
    env:
      {{- with $v.model.s3.endpoint }}
      - name: AWS_ENDPOINT_URL
        value: {{ . | quote }}
      {{- end }}
      {{- with $v.model.s3.credentialsSecret }}
      - name: AWS_ACCESS_KEY_ID
        valueFrom:
          secretKeyRef:
            name: {{ . | quote }}
            key: AWS_ACCESS_KEY_ID
      - name: AWS_SECRET_ACCESS_KEY
        valueFrom:
          secretKeyRef:
            name: {{ . | quote }}
            key: AWS_SECRET_ACCESS_KEY
      {{- end }}
    {{- end }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    resources:
      requests:
        cpu: "4"
        memory: 8Gi
      limits:
        memory: 16Gi
    volumeMounts:
      - name: model
        mountPath: {{ $v.model.mountPath | quote }}
{{- end }}
containers:
  - name: sglang
    image: {{ printf "%s:%s" $v.image.repository $v.image.tag | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    # Wait until the leader's name resolves (LWS publishes it only after the leader pod exists),
    # then exec the launch command given as args so $(LWS_*) expansion stays with the kubelet.
    command:
      - /bin/bash
      - -c
      - >-
        timeout {{ $v.leaderDnsTimeoutSeconds | int }} bash -c
        'until getent hosts "$0" >/dev/null; do echo "waiting for leader DNS $0"; sleep 2; done'
        "$LWS_LEADER_ADDRESS"
        || { echo "leader $LWS_LEADER_ADDRESS did not resolve within {{ $v.leaderDnsTimeoutSeconds | int }} s" >&2; exit 1; };
        exec "$@"
      - keye-serve
    args:
      {{- include "keye-serve.sglangArgs" $root | nindent 6 }}
    {{- $env := include "keye-serve.env" $root | trim }}
    {{- if $env }}
    env:
      {{- $env | nindent 6 }}
    {{- end }}
    {{- if $leader }}
    ports:
      - name: http
        containerPort: {{ $v.sglang.port | int }}
        protocol: TCP
      - name: dist-init
        containerPort: {{ $v.sglang.distInitPort | int }}
        protocol: TCP
    {{- $p := $v.probes }}
    startupProbe:
      httpGet:
        path: {{ $p.startup.path | quote }}
        port: http
      periodSeconds: {{ $p.startup.periodSeconds | int }}
      failureThreshold: {{ $p.startup.failureThreshold | int }}
      timeoutSeconds: {{ $p.startup.timeoutSeconds | int }}
    readinessProbe:
      httpGet:
        path: {{ $p.readiness.path | quote }}
        port: http
      periodSeconds: {{ $p.readiness.periodSeconds | int }}
      failureThreshold: {{ $p.readiness.failureThreshold | int }}
      timeoutSeconds: {{ $p.readiness.timeoutSeconds | int }}
    livenessProbe:
      httpGet:
        path: {{ $p.liveness.path | quote }}
        port: http
      periodSeconds: {{ $p.liveness.periodSeconds | int }}
      failureThreshold: {{ $p.liveness.failureThreshold | int }}
      timeoutSeconds: {{ $p.liveness.timeoutSeconds | int }}
    {{- end }}
    securityContext:
      {{- $sc := deepCopy $v.securityContext }}
      {{- if $v.rdma.enabled }}
      {{- /* RDMA memory registration pins pages: IPC_LOCK lifts the memlock limit. */}}
      {{- $caps := get $sc "capabilities" | default dict }}
      {{- $_ := set $caps "add" (append (get $caps "add" | default list) "IPC_LOCK" | uniq) }}
      {{- $_ := set $sc "capabilities" $caps }}
      {{- end }}
      {{- toYaml $sc | nindent 6 }}
    resources:
      {{- $res := deepCopy $v.resources }}
      {{- $limits := get $res "limits" | default dict }}
      {{- $requests := get $res "requests" | default dict }}
      {{- $_ := set $limits "nvidia.com/gpu" ($v.gpusPerNode | int) }}
      {{- $_ := set $requests "nvidia.com/gpu" ($v.gpusPerNode | int) }}
      {{- if $v.rdma.enabled }}
      {{- $_ := set $limits $v.rdma.resourceName ($v.rdma.count | int) }}
      {{- $_ := set $requests $v.rdma.resourceName ($v.rdma.count | int) }}
      {{- end }}
      {{- $_ := set $res "limits" $limits }}
      {{- $_ := set $res "requests" $requests }}
      {{- toYaml $res | nindent 6 }}
    volumeMounts:
      - name: dshm
        mountPath: /dev/shm
      - name: model
        mountPath: {{ $v.model.mountPath | quote }}
        {{- if eq $v.model.source "pvc" }}
        readOnly: {{ $v.model.pvc.readOnly }}
        {{- end }}
volumes:
  # NCCL and the multimodal processor exchange tensors through /dev/shm; the container
  # runtime's 64 MiB default makes multi-GPU SGLang crash.
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $v.shm.size | quote }}
  - name: model
    {{- if eq $v.model.source "pvc" }}
    persistentVolumeClaim:
      claimName: {{ $v.model.pvc.claimName | quote }}
      readOnly: {{ $v.model.pvc.readOnly }}
    {{- else if eq $v.model.source "hostPath" }}
    hostPath:
      path: {{ $v.model.hostPath.path | quote }}
      type: Directory
    {{- else if eq $v.model.s3.cache "hostPath" }}
    hostPath:
      path: {{ $v.model.s3.cacheHostPath | quote }}
      # Must exist, writable by the pod's user: a directory the kubelet creates is root-owned.
      type: Directory
    {{- else }}
    emptyDir:
      sizeLimit: {{ $v.model.s3.cacheSizeLimit | quote }}
    {{- end }}
{{- end }}

{{/* Environment of the SGLang container (possibly empty). */}}
{{- define "keye-serve.env" -}}
{{- with .Values.network.socketIfname }}
- name: NCCL_SOCKET_IFNAME
  value: {{ . | quote }}
- name: GLOO_SOCKET_IFNAME
  value: {{ . | quote }}
{{- end }}
{{- if .Values.rdma.enabled }}
- name: NCCL_IB_DISABLE
  value: "0"
{{- with .Values.rdma.ibHca }}
- name: NCCL_IB_HCA
  value: {{ . | quote }}
{{- end }}
{{- if ne (toString .Values.rdma.gidIndex) "" }}
- name: NCCL_IB_GID_INDEX
  value: {{ .Values.rdma.gidIndex | toString | quote }}
{{- end }}
{{- end }}
{{- if .Values.apiKey.enabled }}
- name: SGLANG_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keye-serve.apiKeySecret" . | quote }}
      key: {{ .Values.apiKey.secretKey | quote }}
{{- end }}
{{- with .Values.env }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}
