"""The `validate:` section of params.yaml."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from stages.common.config import ConfigError
from stages.common.dataset import MAX_CLASSES


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    SECTION: ClassVar[str] = "validate"

    dataset: str = ""  # prepared dataset: .zip or folder
    out: str = "reports/validation.json"  # metrics file (DVC metric)
    num_classes: int | None = None  # expected class count; None = infer max label + 1
    min_images: int = 1  # fewer images is a critical failure
    max_duplicate_fraction: float = 0.01  # duplicates above this fail the (warning) expectation
    fail_on_duplicates: bool = False  # make the duplicate expectation critical
    workers: int = 0  # decode processes for the manifest; 0 = all cores

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("validate.dataset is required")
        if not self.out:
            raise ConfigError("validate.out is required")
        if self.num_classes is not None and not 0 < self.num_classes <= MAX_CLASSES:
            raise ConfigError(f"validate.num_classes must be in 1..{MAX_CLASSES}")
        if self.min_images < 0:
            raise ConfigError("validate.min_images must be >= 0")
        if not 0.0 <= self.max_duplicate_fraction <= 1.0:
            raise ConfigError("validate.max_duplicate_fraction must be in [0, 1]")
        if self.workers < 0:
            raise ConfigError("validate.workers must be >= 0")


HELP = {
    "dataset": "dataset .zip or folder",
    "out": "metrics JSON (a DVC metric)",
    "num_classes": "expected number of classes (default: max label + 1)",
    "min_images": "fewer images is a critical failure",
    "max_duplicate_fraction": "duplicate images above this fail the (warning) expectation",
    "fail_on_duplicates": "make the duplicate expectation critical",
    "workers": "decode processes, 0 = all cores",
}
