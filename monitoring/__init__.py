"""Monitoring: Carina's Prometheus metrics (:mod:`monitoring.metrics`), the health checks
behind ``carina health`` (:mod:`monitoring.health`) and Flower's configuration
(:mod:`monitoring.flower`). Reads ``queues`` and ``fastio``; loads no imaging code."""
