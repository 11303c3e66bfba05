"""Deploying raymm: the Serve config, Kubernetes manifests and monitoring, rendered from one source."""
