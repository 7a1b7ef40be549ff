"""Choose how to run the encoder on *this* CPU.

bf16 autocast is several times faster than fp32 on CPUs with native bf16 instructions
(AVX512-BF16 or AMX) and gives the same predictions there; on CPUs without them bf16 is
emulated and slower than fp32. So the choice is made per machine at load time, with an
override (config or ``$HEARKEN_PRECISION``) for anyone who needs bit-for-bit fp32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Literal

import torch

from pipeline.errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]
PRECISION_ENV = "HEARKEN_PRECISION"
log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix maths natively (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # very old or unusual builds: treat as unsupported
            continue
    return False


def resolve_precision(requested: Precision = "auto") -> Literal["bf16", "fp32"]:
    """Turn ``auto`` into the fastest exact path for this CPU; honour explicit requests."""
    override = os.environ.get(PRECISION_ENV)
    if override:
        if override not in ("auto", "bf16", "fp32"):
            raise ConfigError(
                f"{PRECISION_ENV}={override!r} is not a precision.", fix="use auto, bf16 or fp32"
            )
        requested = override  # type: ignore[assignment]
    if requested == "auto":
        chosen: Literal["bf16", "fp32"] = "bf16" if cpu_has_native_bf16() else "fp32"
        log.debug("precision auto -> %s", chosen)
        return chosen
    return requested


@contextlib.contextmanager
def inference_context(precision: Literal["bf16", "fp32"]) -> Iterator[None]:
    """Inference mode plus, for bf16, CPU autocast (weights stay fp32, matmuls run in bf16)."""
    with torch.inference_mode():
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield


def configure_threads(num_threads: int | None) -> None:
    """Pin torch's intra-op threads; ``None`` leaves torch's default (one per core)."""
    if num_threads is not None and num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
