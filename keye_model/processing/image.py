"""Image preprocessing for KeyeViT: ``smart_resize``, RGB conversion, normalised raster patches.

REFERENCE §1.1: an image is resized so both sides are multiples of 28 (patch 14 x merge 2) with
its pixel count inside ``[min_pixels, max_pixels]``, rescaled by 1/255, normalised with
mean = std = 0.5 and cut into 14x14 patches in plain raster order (t, h, w). The projector does
the 2x2 grouping, so ``t*h*w/4`` LM tokens come out of each image.

Shapes: ``patches_NCPP`` is (N patches, 3 channels, 14, 14); ``grid_thw`` counts patches
(t, h/14, w/14), not pixels and not merged tokens.

Speed: the resize is Pillow's (the same bicubic filter ``keye-vl-utils`` uses through
``Image.resize``); patches are a strided uint8 view that one vectorised multiply turns into
contiguous float32, plus one in-place add; no per-patch Python loop, no float64 temporaries.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from keye_model.config_utils import field, from_dict, to_dict

if TYPE_CHECKING:
    import torch

PATCH_SIZE = 14
MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: one LM token covers 28x28 pixels
PIXELS_PER_TOKEN = IMAGE_FACTOR * IMAGE_FACTOR  # 784
MAX_ASPECT_RATIO = 200
MIN_TOKENS = 4
MIN_PIXELS = MIN_TOKENS * PIXELS_PER_TOKEN  # 3,136
MODEL_CARD_MAX_TOKENS = 16384
MODEL_CARD_MAX_PIXELS = MODEL_CARD_MAX_TOKENS * PIXELS_PER_TOKEN  # 12,845,056
KEYE_VL_UTILS_MAX_TOKENS = 20480
KEYE_VL_UTILS_MAX_PIXELS = KEYE_VL_UTILS_MAX_TOKENS * PIXELS_PER_TOKEN  # 16,056,320

PREPROCESSOR_CONFIG = "preprocessor_config.json"


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MODEL_CARD_MAX_PIXELS,
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, pixel count in [min, max], aspect kept."""
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize: height and width must be positive, got {height}x{width}")
    if min_pixels > max_pixels:
        raise ValueError(f"smart_resize: min_pixels {min_pixels} > max_pixels {max_pixels}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"smart_resize: aspect ratio {ratio:.1f} of a {height}x{width} image exceeds the "
            f"limit {MAX_ASPECT_RATIO}"
        )
    # Python's round() ties to even, as the released implementation does.
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(h_bar, factor), max(w_bar, factor)


def image_token_count(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MODEL_CARD_MAX_PIXELS,
) -> int:
    """LM tokens an image of this size becomes after the projector: (h'/28) * (w'/28)."""
    h_bar, w_bar = smart_resize(height, width, factor, min_pixels, max_pixels)
    return (h_bar // factor) * (w_bar // factor)


def to_rgb(image: Image.Image, alpha_mode: str = "white") -> Image.Image:
    """An RGB copy of ``image``; transparency composited on white or dropped (``alpha_mode``)."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha and alpha_mode == "white":
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if alpha_mode not in ("white", "drop"):
        raise ValueError(f"alpha_mode must be 'white' or 'drop', got {alpha_mode!r}")
    return image.convert("RGB")


def load_image(image: Any) -> Image.Image:
    """A PIL image from a PIL image, a uint8 HWC/HW array or a file path."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        path = Path(str(image).removeprefix("file://"))
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as opened:
            opened.load()
            return opened
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 (H, W[, C]), got dtype {image.dtype}")
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            return Image.fromarray(
                image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1 else image
            )
        raise ValueError(
            f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}"
        )
    raise TypeError(
        f"unsupported image type {type(image).__name__}; expected PIL image, uint8 array or path"
    )


def normalisation_affine(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 (scale, shift) with ``u8*scale + shift == (u8/255 - mean)/std``."""
    mean_c = np.asarray(mean, dtype=np.float64)
    std_c = np.asarray(std, dtype=np.float64)
    return (1.0 / (255.0 * std_c)).astype(np.float32), (-mean_c / std_c).astype(np.float32)


def patchify(
    rgb_HWC: np.ndarray, patch_size: int, scale_C: np.ndarray, shift_C: np.ndarray
) -> torch.Tensor:
    """Normalised raster-order patches (N, C, p, p) of a uint8 HWC image with sides divisible by p."""
    import torch

    height, width, channels = rgb_HWC.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image {height}x{width} is not divisible into {patch_size}px patches")
    gh, gw = height // patch_size, width // patch_size
    # A strided uint8 view in patch order; the multiply reads it once and writes contiguous
    # float32, then one in-place add finishes the affine map (measured fastest of the numpy,
    # torch and lookup-table variants on CPU).
    view = rgb_HWC.reshape(gh, patch_size, gw, patch_size, channels).transpose(0, 2, 4, 1, 3)
    out = np.empty(view.shape, dtype=np.float32)
    np.multiply(view, scale_C.reshape(1, 1, channels, 1, 1), out=out)
    np.add(out, shift_C.reshape(1, 1, channels, 1, 1), out=out)
    return torch.from_numpy(out.reshape(gh * gw, channels, patch_size, patch_size))


@dataclass
class KeyeImageProcessor:
    """Images -> ``pixel_values`` (N, 3, 14, 14) and ``image_grid_thw`` (num_images, 3) in patches."""

    min_pixels: int = field(MIN_PIXELS, help="Fewest pixels after resize (4 LM tokens = 3,136 px).")
    max_pixels: int = field(
        MODEL_CARD_MAX_PIXELS,
        help="Most pixels after resize. Model card: 16384 tokens x 784 px; the released "
        "keye-vl-utils uses 20480 tokens (KEYE_VL_UTILS_MAX_PIXELS).",
    )
    patch_size: int = field(PATCH_SIZE, help="ViT patch side in pixels (Conv2d kernel 14).")
    merge_size: int = field(
        MERGE_SIZE, help="Projector merges merge_size x merge_size patches per LM token."
    )
    image_mean: tuple[float, ...] = field(
        (0.5, 0.5, 0.5), help="Per-channel mean after 1/255 rescale (SigLIP)."
    )
    image_std: tuple[float, ...] = field(
        (0.5, 0.5, 0.5), help="Per-channel std after 1/255 rescale (SigLIP)."
    )
    alpha_mode: str = field(
        "white",
        help="Transparent pixels: 'white' composites on white; 'drop' discards alpha as "
        "keye-vl-utils' Image.convert('RGB') does (use it for exact parity on RGBA files).",
    )

    def __post_init__(self) -> None:
        if self.alpha_mode not in ("white", "drop"):
            raise ValueError(f"alpha_mode must be 'white' or 'drop', got {self.alpha_mode!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")

    @property
    def factor(self) -> int:
        """Side multiple: one LM token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def target_size(
        self, height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None
    ):
        """(height, width) this processor resizes an image of the given size to."""
        return smart_resize(
            height,
            width,
            self.factor,
            self.min_pixels if min_pixels is None else min_pixels,
            self.max_pixels if max_pixels is None else max_pixels,
        )

    def resize(self, image: Any, size: tuple[int, int] | None = None) -> Image.Image:
        """RGB image resized (bicubic) to ``size`` (h, w) or to its ``smart_resize`` target."""
        rgb = to_rgb(load_image(image), self.alpha_mode)
        height, width = size if size is not None else self.target_size(rgb.height, rgb.width)
        if (width, height) != rgb.size:
            rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
        return rgb

    def patches(self, image: Image.Image) -> torch.Tensor:
        """Normalised raster patches (h*w, 3, p, p) of an already resized RGB image."""
        scale, shift = normalisation_affine(self.image_mean, self.image_std)
        return patchify(np.asarray(image), self.patch_size, scale, shift)

    def preprocess_one(
        self, image: Any, size: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Patches and (t, h, w) patch grid of one image."""
        rgb = self.resize(image, size)
        grid = (1, rgb.height // self.patch_size, rgb.width // self.patch_size)
        return self.patches(rgb), grid

    def __call__(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """``pixel_values`` (N, 3, p, p) float32 and ``image_grid_thw`` (num_images, 3) int64."""
        import torch

        if isinstance(images, (Image.Image, np.ndarray, str, Path)):
            images = [images]
        if len(images) == 0:
            raise ValueError("KeyeImageProcessor: got an empty list of images")
        chunks, grids = [], []
        for index, image in enumerate(images):
            try:
                patches, grid = self.preprocess_one(image)
            except (ValueError, TypeError, FileNotFoundError) as err:
                raise type(err)(f"image {index}: {err}") from err
            chunks.append(patches)
            grids.append(grid)
        pixel_values = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=0)
        return {
            "pixel_values": pixel_values,
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),
        }

    def num_tokens(self, grid_thw: Sequence[int]) -> int:
        """LM tokens (placeholders) for one (t, h, w) patch grid."""
        t, h, w = (int(v) for v in grid_thw)
        return t * h * w // (self.merge_size**2)

    def to_json_dict(self) -> dict[str, Any]:
        """Settings as written to ``preprocessor_config.json``."""
        return {"processor_class": "KeyeImageProcessor", **to_dict(self)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``preprocessor_config.json`` into ``directory``."""
        path = Path(directory) / PREPROCESSOR_CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> KeyeImageProcessor:
        """Read settings from ``directory/preprocessor_config.json`` (defaults when absent)."""
        path = Path(directory) / PREPROCESSOR_CONFIG
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return from_dict(cls, {k: v for k, v in data.items() if k in known})
