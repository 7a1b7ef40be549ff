"""Time the encoder alone on each numeric path this CPU offers, against the path Hearken uses.

    python scripts/bench_encoder_paths.py [--model DIR] [--out scripts/results/encoder_paths.json]

Why: the service's concurrency-8 goal and the backlog engine's speed-up both hinge on how fast one
encoder pass can be on the machine at hand, and the answer differs by CPU (AMX, AVX512-BF16, VNNI).
This measures, on the committed model's encoder with 2 threads, medians of 10 passes after 2 warm-up
passes, for one 256-token window, eight of them, and one 64-token window:

- ``torch_fp32``: the fp32 reference;
- ``torch_bf16``: what ``Pipeline.from_folder`` builds on a CPU with native bf16 (prepacked weights,
  the attention kernel ``runtime.resolve_bf16_attention`` picks there); fp32 elsewhere, then this
  row repeats the fp32 one;
- ``torch_bf16_fused_attention`` / ``torch_bf16_explicit_attention``: the same with the other kernel;
- ``torch_int8_per_channel`` / ``torch_int8_per_tensor``: dynamic int8 Linear layers
  (``torch.ao.quantization.quantize_dynamic``, deprecated in torch 2.13 but still working);
- ``openvino_bf16`` / ``openvino_fp32``: only when the ``openvino`` package is importable (it is
  not a Hearken dependency); the model is converted from the torch module in memory, and the
  conversion time is reported, since a serving process would pay it at every start.

For the pipeline's own path it also times one thread against two, and eight windows in one pass
against one at a time: what a second worker and batching can add on this CPU.

Each path also reports the cosine between its mean-pooled token states and fp32's on 4 x 128 random
tokens, the first sign of a path that would change predictions. Nothing here is used at run time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "scripts" / "results" / "encoder_paths.json"
SHAPES = ((1, 256), (8, 256), (1, 64))


def median_ms(run: Callable[[], Any], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``run`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def cpu_flags() -> list[str]:
    """The CPU features that decide the fastest path (Linux /proc/cpuinfo; empty elsewhere)."""
    wanted = {"avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f"}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted({flag for flag in text.split() if flag in wanted})


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the committed one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from pipeline.bert import BertSelfAttention
    from pipeline.runtime import inference_context, precision_override
    from pipeline.triage import Pipeline

    torch.set_num_threads(2)
    with precision_override("fp32"):
        fp32_pipeline = Pipeline.from_folder(args.model)
    with precision_override(None):
        fast_pipeline = Pipeline.from_folder(args.model)
    fp32 = fp32_pipeline.encoder.net.encoder.eval()
    fast = fast_pipeline.encoder.net.encoder

    def torch_path(module: torch.nn.Module, precision: str) -> Callable[[Any, Any], Any]:
        def forward(ids: Any, mask: Any) -> Any:
            with inference_context(precision):  # type: ignore[arg-type]
                return module(ids, mask).float()

        return forward

    paths: dict[str, Callable[[Any, Any], Any]] = {
        "torch_fp32": torch_path(fp32, "fp32"),
        f"torch_{fast_pipeline.precision}": torch_path(fast, fast_pipeline.precision),
        "torch_int8_per_channel": torch_path(
            quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear: per_channel_dynamic_qconfig}), "fp32"
        ),
        "torch_int8_per_tensor": torch_path(
            quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8), "fp32"
        ),
    }
    notes: dict[str, Any] = {}
    if fast_pipeline.precision == "bf16":
        # The attention kernel the runtime did not pick on this CPU, to show the choice was right.
        chosen = fast_pipeline.encoder.bf16_attention
        other = "explicit" if chosen == "fused" else "fused"
        with precision_override(None):
            other_net = Pipeline.from_folder(args.model).encoder.net.encoder
        for module in other_net.modules():
            if isinstance(module, BertSelfAttention):
                module.explicit_bf16 = other == "explicit"
        paths[f"torch_bf16_{other}_attention"] = torch_path(other_net, "bf16")
        notes["bf16_attention"] = {"pipeline": chosen, "also_timed": other}
    try:
        import openvino as ov
    except ImportError:
        notes["openvino"] = "not installed (pip install openvino to include it)"
    else:
        example = (torch.randint(1000, 2000, (2, 64)), torch.ones(2, 64, dtype=torch.long))
        started = time.perf_counter()
        converted = ov.convert_model(fp32, example_input=example)
        core = ov.Core()
        for name, hint in (("openvino_bf16", "bf16"), ("openvino_fp32", "f32")):
            compiled = core.compile_model(
                converted, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": 2}
            )
            request = compiled.create_infer_request()

            def infer(ids: Any, mask: Any, request: Any = request) -> Any:
                return torch.from_numpy(request.infer([ids.numpy(), mask.numpy()])[0])

            paths[name] = infer
        notes["openvino"] = {
            "version": ov.__version__,
            "convert_and_compile_seconds": round(time.perf_counter() - started, 2),
        }

    generator = torch.Generator().manual_seed(0)
    timings: dict[str, dict[str, float]] = {name: {} for name in paths}
    for batch, length in SHAPES:
        ids = torch.randint(1000, 20000, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        for name, forward in paths.items():
            key = f"{batch}x{length}_ms"
            timings[name][key] = median_ms(lambda f=forward, i=ids, m=mask: f(i, m))
            print(f"{name:24s} {batch}x{length}: {timings[name][key]} ms", file=sys.stderr)

    # What a second core buys the pipeline's own path: one thread against two, same shapes. The
    # backlog engine's ceiling on 2 cores follows from this and from batch 8 against batch 1.
    pipeline_path = f"torch_{fast_pipeline.precision}"
    one_thread: dict[str, float] = {}
    torch.set_num_threads(1)
    for batch, length in SHAPES[:2]:
        ids = torch.randint(1000, 20000, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        key = f"{batch}x{length}_ms"
        one_thread[key] = median_ms(lambda f=paths[pipeline_path], i=ids, m=mask: f(i, m))
    torch.set_num_threads(2)
    scaling = {
        "one_thread_ms": one_thread,
        "two_threads_speedup": {k: round(v / timings[pipeline_path][k], 3) for k, v in one_thread.items()},
        "batch8_per_window_speedup_two_threads": round(
            timings[pipeline_path]["1x256_ms"] * 8 / timings[pipeline_path]["8x256_ms"], 3
        ),
    }

    ids = torch.randint(1000, 20000, (4, 128), generator=generator)
    mask = torch.ones(4, 128, dtype=torch.long)
    reference = paths["torch_fp32"](ids, mask).mean(1)
    cosine = {
        name: round(float(torch.nn.functional.cosine_similarity(reference, f(ids, mask).mean(1)).min()), 5)
        for name, f in paths.items()
    }
    report = {
        "command": "python " + " ".join(sys.argv),
        "model_version": fast_pipeline.model_version,
        "pipeline_precision": fast_pipeline.precision,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_flags": cpu_flags(),
            "torch": torch.__version__,
        },
        "threads": 2,
        "timings_ms": timings,
        "ratio_to_pipeline_path_8x256": {
            name: round(t["8x256_ms"] / timings[f"torch_{fast_pipeline.precision}"]["8x256_ms"], 3)
            for name, t in timings.items()
        },
        "min_cosine_to_fp32": cosine,
        "pipeline_path_scaling": scaling,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    ratio_column = f"8×256 ÷ {fast_pipeline.precision} path"
    print(f"| path | 1×256 ms | 8×256 ms | 1×64 ms | {ratio_column} | cosine to fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in timings.items():
        print(
            f"| {name} | {t['1x256_ms']} | {t['8x256_ms']} | {t['1x64_ms']} | "
            f"{report['ratio_to_pipeline_path_8x256'][name]} | {cosine[name]} |"
        )
    print(
        f"\n{pipeline_path}: 2 threads vs 1: {scaling['two_threads_speedup']}; batch 8 vs batch 1 per "
        f"256-token window: {scaling['batch8_per_window_speedup_two_threads']}x"
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
