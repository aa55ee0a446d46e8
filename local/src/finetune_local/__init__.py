"""A cluster on one machine: a Kubernetes API test server, SeaweedFS, and a local runner for pods."""
