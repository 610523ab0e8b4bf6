# Sourced on every node before `ray start` (cluster/aws-*.yaml): exports the secrets Ray
# workers need, read from AWS Secrets Manager with the node's instance role, so nothing
# secret is written into a cluster YAML. S3 image reads use the same instance role.
#   PIXTRAL_SERVE_API_KEYS  <- secret pixtral-serve/api-keys (required; comma-separated)
#   HF_TOKEN                <- secret pixtral-serve/hf-token (optional; gated checkpoints)
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-west-2}"
_pixtral_secret() {
  python -c 'import sys, boto3
try:
    print(boto3.client("secretsmanager").get_secret_value(SecretId=sys.argv[1])["SecretString"])
except Exception as e:
    sys.exit(f"{sys.argv[1]}: {e}")' "$1"
}
PIXTRAL_SERVE_API_KEYS="$(_pixtral_secret pixtral-serve/api-keys)" || return 1
export PIXTRAL_SERVE_API_KEYS
if HF_TOKEN="$(_pixtral_secret pixtral-serve/hf-token 2>/dev/null)"; then export HF_TOKEN; else unset HF_TOKEN; fi
# Ray Serve's throughput mode, its gRPC message cap and HAProxy on port 8000: see k8s/image/Dockerfile.
# HAProxy reaches the ingress replicas on their own ports (30000 and up) on every node: the nodes'
# security group must allow traffic between them (Ray's default one does).
export RAY_SERVE_THROUGHPUT_OPTIMIZED=1
export RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=134217728
export RAY_SERVE_ENABLE_HA_PROXY=1
export RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1
export RAY_SERVE_INGRESS_ROUTER_REPLICAS_PER_NODE=2
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.api.proxy_errors:openai_error_bodies
