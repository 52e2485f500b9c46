{{/*
Cross-field checks a JSON schema cannot express (values.schema.json checks single fields).
Each message names the fields involved so a bad --set is easy to find.
*/}}
{{- define "keye-serve.validate" -}}
{{- $v := .Values -}}
{{- $gpus := mul (int $v.nodes) (int $v.gpusPerNode) -}}
{{- if ne (int $v.sglang.tp) (int $gpus) }}
{{- fail (printf "sglang.tp (%d) must equal nodes (%d) x gpusPerNode (%d) = %d" (int $v.sglang.tp) (int $v.nodes) (int $v.gpusPerNode) (int $gpus)) }}
{{- end }}
{{- if ne (mod (int $v.sglang.tp) (int $v.sglang.dp)) 0 }}
{{- fail (printf "sglang.dp (%d) must divide sglang.tp (%d)" (int $v.sglang.dp) (int $v.sglang.tp)) }}
{{- end }}
{{- if ne (mod (int $v.sglang.tp) (int $v.sglang.ep)) 0 }}
{{- fail (printf "sglang.ep (%d) must divide sglang.tp (%d)" (int $v.sglang.ep) (int $v.sglang.tp)) }}
{{- end }}
{{- if and $v.sglang.enableDpAttention (le (int $v.sglang.dp) 1) }}
{{- fail "sglang.enableDpAttention needs sglang.dp > 1" }}
{{- end }}
{{- if and (eq $v.sglang.moeA2ABackend "deepep") (le (int $v.sglang.ep) 1) }}
{{- fail "sglang.moeA2ABackend=deepep needs sglang.ep > 1" }}
{{- end }}
{{- if and (eq $v.model.source "s3") (not (hasPrefix "s3://" $v.model.s3.uri)) }}
{{- fail (printf "model.s3.uri must be an s3://bucket/prefix URI when model.source is s3 (got %q)" $v.model.s3.uri) }}
{{- end }}
{{- if and $v.apiKey.enabled (not $v.apiKey.existingSecret) (not $v.apiKey.value) }}
{{- fail "apiKey.enabled needs apiKey.existingSecret or apiKey.value" }}
{{- end }}
{{- if eq (int $v.sglang.port) (int $v.sglang.distInitPort) }}
{{- fail (printf "sglang.distInitPort (%d) must differ from sglang.port" (int $v.sglang.distInitPort)) }}
{{- end }}
{{- end }}
