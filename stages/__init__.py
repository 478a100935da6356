"""The pipeline steps, one package each: `python -m stages.<step> --help`.

Every package holds its command line (`cli.py`, flags generated from its config dataclass), its
config (`config.py`, the step's section of params.yaml) and its engine; what several steps share
lives once in `stages.common`. Package `__init__` files import nothing, so `--help` is instant.
"""
