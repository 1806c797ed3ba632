"""Monitoring: Flower's configuration, and (to come) Prometheus metrics and health checks."""
