"""Observability: logs, debug capture, masking of secrets, Prometheus metrics."""
