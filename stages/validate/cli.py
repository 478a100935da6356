"""`python -m stages.validate`: a great-expectations suite over a prepared dataset.

    python -m stages.validate --dataset data/datasets/cats.zip [--out reports/validation.json]

Decodes every image of the ZIP or folder into a manifest and checks what training relies on (see
`stages.validate.suite`). `reports/validation.json` (a DVC metric) holds flat numbers and one entry per
expectation. Exit status: 0 passed, 1 a critical expectation failed (the metrics file is still written),
2 bad input (options, unreadable dataset).
"""

from __future__ import annotations

from collections.abc import Sequence

from stages.common.cli import config_command
from stages.validate.config import HELP, ValidateConfig


def _run(config: ValidateConfig) -> None:
    from stages.validate.suite import ValidationFailed, format_summary, validate_dataset

    try:
        summary = validate_dataset(config)
    except ValidationFailed as exc:
        print(format_summary(exc.summary))
        raise ValidationFailed(f"{exc}; metrics in {config.out}", exc.summary) from None
    print(format_summary(summary))


def main(argv: Sequence[str] | None = None) -> int:
    return config_command("python -m stages.validate", __doc__, ValidateConfig, HELP, argv, _run)
