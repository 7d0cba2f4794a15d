"""What the running platform tells its operators: Prometheus metrics, JSON logs, traces."""
