"""Serving engine shared by the commands that answer HTTP (`stages.export serve`, `stages.generate explore`):
`batching` (dynamic batching, bounded queue) and `http` (bounded threading server, safe handler, input parsers).
Not a stage: no command of its own."""
