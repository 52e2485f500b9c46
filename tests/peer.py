"""Load the released ``keye-vl-utils`` package as a peer for parity tests and benchmarks (test code).

``keye_vl_utils.vision_process`` imports ``torchvision`` at module level but none of the
functions compared here (``smart_resize``, ``fetch_image``, ``extract_slow_fast_frames``) use
it. The only torchvision wheel PyPI offers for torch 2.13 is built against CUDA and cannot load
next to this CPU-only torch (``libc10_cuda.so`` missing), so when the real import fails an
empty stand-in module is registered for torchvision - a placeholder for what cannot run here,
never called. Everything else (PIL, cv2, torch, einops) is the real library.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def _torchvision_stand_in() -> None:
    root = types.ModuleType("torchvision")
    root.__doc__ = "Stand-in: the CUDA-only torchvision wheel cannot load with CPU torch here."
    io = types.ModuleType("torchvision.io")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear")
    root.io, root.transforms = io, transforms
    sys.modules.update(
        {"torchvision": root, "torchvision.io": io, "torchvision.transforms": transforms}
    )


def load_keye_vl_utils() -> Any:
    """The ``keye_vl_utils.vision_process`` module (raises ImportError when not installed)."""
    try:
        importlib.import_module("torchvision")
    except (ImportError, OSError, RuntimeError):
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _torchvision_stand_in()
    return importlib.import_module("keye_vl_utils.vision_process")
