"""Choosing between the reference and the fast formulation of each op.

Every op in this package keeps a plain "ref" formulation that serves as its specification and as
the test oracle, and may add a "fast" one that computes the same math with fewer operations.
Callers pass ``impl="auto"`` unless they want to pin one; what actually ran is recorded here so a
training run can report it (it ends up as an MLflow tag).
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

VALID_IMPLS: tuple[str, ...] = ("ref", "fast", "auto")

# Which formulations exist per op; "auto" resolves to the first entry, so list the preferred one
# first. An op that only has "ref" still accepts impl="fast" so that a caller can ask for the fast
# path everywhere without knowing which ops have one -- but the registry then says "ref", so the
# substitution is visible rather than silent.
_AVAILABLE: dict[str, tuple[str, ...]] = {
    "bias_act": ("fast", "ref"),
    "upfirdn2d": ("fast", "ref"),
    "fma": ("fast", "ref"),
    "filtered_lrelu": ("fast", "ref"),
}

_in_use: dict[str, str] = {}
_lock = threading.Lock()


def check_impl(impl: str) -> str:
    """Validate an ``impl`` argument without resolving it (for ops that only forward it)."""
    if impl not in VALID_IMPLS:
        raise ValueError(f"impl must be one of {', '.join(repr(v) for v in VALID_IMPLS)}; got {impl!r}")
    return impl


def resolve_impl(op: str, impl: str) -> str:
    """Return "ref" or "fast" for ``op`` and record the choice.

    Raises ValueError for an unknown op or an invalid ``impl``.
    """
    check_impl(impl)
    if op not in _AVAILABLE:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(sorted(_AVAILABLE))}")
    available = _AVAILABLE[op]
    if impl == "auto":
        chosen = available[0]
    elif impl in available:
        chosen = impl
    else:
        # Only reachable for an op without a fast formulation; logged below as "ref".
        chosen = "ref"
    # Hot path: this runs once per layer per step, so avoid the lock when nothing changes.
    if _in_use.get(op) != chosen:
        with _lock:
            previous = _in_use.get(op)
            if previous != chosen:
                _in_use[op] = chosen
                if previous is None:
                    logger.info("ops.%s: using the %r implementation", op, chosen)
                else:
                    # Mixing impls within one process is legitimate (tests, benchmarks) but worth
                    # knowing about when it happens in a training run.
                    logger.debug("ops.%s: switched from %r to %r implementation", op, previous, chosen)
    return chosen


def implementations_in_use() -> dict[str, str]:
    """Map of op name -> implementation most recently used by that op in this process."""
    with _lock:
        return dict(_in_use)


def _reset_for_tests() -> None:
    with _lock:
        _in_use.clear()


def static_shape(t) -> list[int]:
    """``t.shape`` as Python ints. Under torch.jit.trace shapes are tensors and int() warns; the
    ops only use shapes for layer geometry, which is fixed per network, so baking them in as
    constants is intended and the warning is silenced here (and only here)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        return [int(s) for s in t.shape]
