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
from torch import nn

from pipeline.errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]
Bf16Attention = Literal["auto", "fused", "explicit"]
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


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles (where oneDNN's bf16 kernels run on the matrix unit)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe is not None and probe())
    except RuntimeError:
        return False


def resolve_bf16_attention(requested: Bf16Attention = "auto") -> Literal["fused", "explicit"]:
    """The faster exact attention kernel for bf16 inference on this CPU.

    Measured on the committed model's encoder, 2 threads, 8 x 256 tokens: on AVX512-BF16 without
    AMX (AMD EPYC) two explicit bf16 matmuls and a softmax took 4.3 ms a layer against 7.1 ms for
    torch's fused kernel; on AMX (Intel Xeon) the fused kernel is the faster one, a whole pass
    63.7 against 74.5 ms (one window 14.0 against 17.0 ms), and it is also a little closer to fp32
    (mean-pooled cosine 0.99998 against 0.99995).
    """
    if requested != "auto":
        return requested
    return "fused" if cpu_has_amx() else "explicit"


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
def precision_override(value: Precision | None) -> Iterator[None]:
    """Set ``$HEARKEN_PRECISION`` (None: unset, i.e. the automatic choice) while a pipeline is built.

    For benchmarks and comparisons that load the same folder at two precisions in one process.
    ``TextEncoder`` resolves the precision once, at construction, so the variable only needs to
    hold while ``Pipeline.from_folder`` runs; the caller's own setting is restored afterwards.
    """
    saved = os.environ.get(PRECISION_ENV)
    if value is None:
        os.environ.pop(PRECISION_ENV, None)
    else:
        os.environ[PRECISION_ENV] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PRECISION_ENV, None)
        else:
            os.environ[PRECISION_ENV] = saved


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


#: The batch-size hint oneDNN packs for; measured the same from 5 to 2,048 rows whatever the hint.
PACK_BATCH_HINT = 256


class PrepackedBf16Linear(nn.Module):
    """A frozen bf16 ``nn.Linear`` whose weight oneDNN reordered once, at load, into its own layout.

    Why: a plain bf16 ``F.linear`` re-packs its weight for oneDNN's kernel on every call. For the
    short inputs of a one-message request that packing is a large share of the matmul: measured
    here (2 threads, AVX512-BF16, no AMX), 384 -> 1536 features took 47 us at 8 tokens packed per
    call against 28 us prepacked, and 381 against 356 us at 256 tokens. The arithmetic is the
    same bf16 kernel with fp32 accumulation, so the outputs are bit-identical (checked on this
    CPU by ``prepack_bf16_linears`` before any layer is swapped, and by the tests).
    Inference only: the packed weight is not a parameter and cannot be trained or saved.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # The cast is the one autocast makes before a bf16 matmul; a no-op on bf16 inputs.
        return torch.ops.mkldnn._linear_pointwise(
            inputs.to(torch.bfloat16), self.weight, self.bias, "none", [], ""
        )


def prepacked_linear_matches(linear: nn.Linear) -> bool:
    """True when a prepacked copy of ``linear`` computes bit for bit what ``F.linear`` in bf16 does.

    Private oneDNN ops may be missing (a torch built without mkldnn) or behave differently on
    another CPU or torch version; then the plain path is kept, never a different result.
    """
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        packed = PrepackedBf16Linear(linear)
        probe = torch.randn(2, 3, linear.in_features, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = nn.functional.linear(
                probe.to(torch.bfloat16),
                linear.weight.to(torch.bfloat16),
                None if linear.bias is None else linear.bias.to(torch.bfloat16),
            )
            return bool(torch.equal(packed(probe), expected))
    except (AttributeError, RuntimeError, NotImplementedError) as exc:
        log.debug("prepacked bf16 linear unavailable: %s", exc)
        return False


def prepack_bf16_linears(net: nn.Module) -> int:
    """Swap every ``nn.Linear`` of an inference-only network for a ``PrepackedBf16Linear``.

    Returns how many layers were swapped: 0 when this CPU or torch build cannot prepack exactly,
    in which case the caller keeps plain bf16 weights.
    """
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears or not prepacked_linear_matches(linears[0][1]):
        return 0
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, PrepackedBf16Linear(linear))
    return len(linears)
