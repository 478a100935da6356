"""evaluate: the stage around the metric engine (`stages.metrics`): `config` (the `evaluate:` params),
`evaluation` (the stage: resolve the network, compute, write metrics.json, log to MLflow), `cli` (the command).
"""
