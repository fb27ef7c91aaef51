"""Per task: seconds per sampler level, peak VRAM and the share of time outside expert
forwards, for full-size architectures with random weights, for each offload preset.

    python benchmarks/gpu_tasks.py [--task insertion --task regional_t2i ...]
                                   [--offload none --offload group ...] [--particles 2]
                                   [--levels 3] [--langevin-steps 1] [--tiny]

Every ``benchmarks/bench_<family>.py`` or ``benchmarks/gpu_<family>.py`` module next to this
file (but this one) is run through its ``run(settings) -> list[Row]`` (``benchmarks.common``);
image tasks live in ``bench_image.py``, the video families in their own modules, so no one
edits this file to add rows. Without CUDA it says that the
full-size table needs a GPU, runs the tiny variants on the CPU as a smoke table, and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from benchmarks.common import OFFLOAD_PRESETS, Row, Settings, table  # noqa: E402


def family_modules() -> list:
    """``benchmarks.bench_*`` and ``benchmarks.gpu_*`` (not this module), sorted by name."""
    paths = sorted(HERE.glob("bench_*.py")) + sorted(path for path in HERE.glob("gpu_*.py") if path.stem != "gpu_tasks")
    return [importlib.import_module(f"benchmarks.{path.stem}") for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", default=[], help="only these tasks (repeatable)")
    parser.add_argument("--offload", action="append", default=[], choices=OFFLOAD_PRESETS, help="offload presets (default: all)")
    parser.add_argument("--particles", type=int, default=2)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--langevin-steps", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny variants even when CUDA is available")
    arguments = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not arguments.tiny
    if not cuda:
        print("Full-size benchmarks need a CUDA GPU; running the tiny variants on the CPU (smoke table).")
    offloads = tuple(arguments.offload) or (OFFLOAD_PRESETS if cuda else ("none", "group"))
    settings = Settings(
        device="cuda" if cuda else "cpu",
        full=cuda,
        offloads=offloads,
        particles=arguments.particles,
        levels=arguments.levels,
        langevin_steps=arguments.langevin_steps,
        tasks=tuple(arguments.task),
    )
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
    rows: list[Row] = []
    for module in family_modules():
        try:
            rows.extend(module.run(settings))
        except Exception as error:  # one family failing must not hide the others' rows
            traceback.print_exc()
            rows.append(Row(module.__name__, "failed", "-", "-", settings.particles, None, None, None, 0, f"{type(error).__name__}: {error}"[:120]))
    print(f"levels={settings.levels} langevin_steps={settings.langevin_steps} (s/level = sampler wall time / (levels - 1))")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
