"""Video preprocessing: 2 fps sampling, Slow-Fast frame selection and the per-video token budget.

REFERENCE §1.1 (Keye-VL-1.5 Slow-Fast encoding):
- frames are sampled at 2 fps (PyAV decodes files; already decoded frames are accepted too);
- frame 0 is slow; a later frame is *fast* when >= 90% of its 28x28 patches (HSV, frame shrunk
  to <= 256 tokens) have cosine similarity > 0.7 with the last slow frame;
- fast frames get 30% of the slow-frame token budget; a binary search picks the largest slow
  budget (48..768 tokens per frame) for which the whole video fits 65,536 tokens.

Output layout: one ``video_grid_thw`` row *per frame* with t = 1, so each frame is its own
attention sequence in the ViT (REFERENCE §1.1: no cross-frame attention) and slow and fast
frames may have different sizes. Rows of all videos are concatenated; ``video_num_frames`` says
how many rows belong to each video. Patches are raster (t, h, w) per frame, like images.

Differences from keye-vl-utils, on purpose: the budget search counts the tokens the frames will
really have after ``smart_resize`` and returns the largest budget that fits (keye-vl-utils
returns the first budget that *exceeds* its estimate); frame times come from the container's
presentation timestamps rather than ``index / average_fps``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from keye_model.config_utils import field, from_dict, to_dict
from keye_model.processing.image import (
    IMAGE_FACTOR,
    MERGE_SIZE,
    PATCH_SIZE,
    PIXELS_PER_TOKEN,
    load_image,
    normalisation_affine,
    patchify,
    smart_resize,
    to_rgb,
)

if TYPE_CHECKING:
    import torch

VIDEO_PREPROCESSOR_CONFIG = "video_preprocessor_config.json"


# --------------------------------------------------------------------------- pure functions


def rgb_to_hsv_u8(rgb_HWC: np.ndarray) -> np.ndarray:
    """8-bit HSV with OpenCV's convention (H in [0, 180), S and V in [0, 255]) of a uint8 RGB image."""
    rgb = rgb_HWC.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    safe_v = np.where(v > 0, v, 1.0)
    s = np.where(v > 0, diff * 255.0 / safe_v, 0.0)
    safe_diff = np.where(diff > 0, diff, 1.0)
    h = np.where(
        v == r,
        60.0 * (g - b) / safe_diff,
        np.where(v == g, 120.0 + 60.0 * (b - r) / safe_diff, 240.0 + 60.0 * (r - g) / safe_diff),
    )
    h = np.where(diff > 0, h, 0.0)
    h = np.where(h < 0, h + 360.0, h)
    hsv = np.stack([np.round(h / 2.0) % 180.0, np.round(s), v], axis=-1)
    return hsv.astype(np.uint8)


def frame_hsv(rgb_HWC: np.ndarray) -> np.ndarray:
    """8-bit HSV of a frame: OpenCV's converter when installed (40x faster), else ``rgb_to_hsv_u8``."""
    try:
        import cv2
    except ImportError:
        return rgb_to_hsv_u8(rgb_HWC)
    return cv2.cvtColor(np.ascontiguousarray(rgb_HWC), cv2.COLOR_RGB2HSV)


def patch_similarity(
    frame_a_HWC: np.ndarray,
    frame_b_HWC: np.ndarray,
    patch: int = IMAGE_FACTOR,
    threshold: float = 0.7,
    eps: float = 1e-8,
) -> float:
    """Fraction of ``patch`` x ``patch`` patches whose cosine similarity exceeds ``threshold``.

    Patches that are all zero in both frames carry no signal and are left out of the fraction;
    when every patch is such, the frames count as identical (1.0).
    """
    if frame_a_HWC.shape != frame_b_HWC.shape:
        raise ValueError(f"frames differ in shape: {frame_a_HWC.shape} vs {frame_b_HWC.shape}")
    height, width, channels = frame_a_HWC.shape
    if height % patch or width % patch:
        raise ValueError(f"frame {height}x{width} is not divisible into {patch}px patches")
    gh, gw = height // patch, width // patch

    def vectors(frame: np.ndarray) -> np.ndarray:
        grid = frame.astype(np.float32).reshape(gh, patch, gw, patch, channels)
        return grid.transpose(0, 2, 4, 1, 3).reshape(gh * gw, -1)

    va, vb = vectors(frame_a_HWC), vectors(frame_b_HWC)
    norm_a = np.linalg.norm(va, axis=1)
    norm_b = np.linalg.norm(vb, axis=1)
    cosine = (va * vb).sum(axis=1) / ((norm_a + eps) * (norm_b + eps))
    informative = ~((norm_a < 0.01) & (norm_b < 0.01))
    if not informative.any():
        return 1.0
    return float((cosine[informative] > threshold).mean())


def select_fast_frames(
    frames_HSV: Sequence[np.ndarray],
    patch_threshold: float = 0.7,
    min_similar_fraction: float = 0.9,
    patch: int = IMAGE_FACTOR,
) -> list[bool]:
    """Per-frame fast flags: frame 0 is slow; fast when similar enough to the last slow frame."""
    flags: list[bool] = []
    last_slow: np.ndarray | None = None
    for frame in frames_HSV:
        if last_slow is None:
            flags.append(False)
            last_slow = frame
            continue
        similar = patch_similarity(last_slow, frame, patch, patch_threshold) >= min_similar_fraction
        flags.append(similar)
        if not similar:
            last_slow = frame
    return flags


def frame_tokens(
    height: int, width: int, min_tokens: int, budget_tokens: int, factor: int = IMAGE_FACTOR
) -> int:
    """LM tokens of one frame resized with at most ``budget_tokens`` (and at least ``min_tokens``)."""
    h_bar, w_bar = frame_size(height, width, min_tokens, budget_tokens, factor)
    return (h_bar // factor) * (w_bar // factor)


def frame_size(
    height: int, width: int, min_tokens: int, budget_tokens: int, factor: int = IMAGE_FACTOR
) -> tuple[int, int]:
    """Resized (height, width) of a frame for a token budget (``smart_resize`` in token units)."""
    per_token = factor * factor
    return smart_resize(
        height, width, factor, min_tokens * per_token, max(budget_tokens, min_tokens) * per_token
    )


def fast_budget(slow_tokens: int, fast_ratio: float, min_tokens: int) -> int:
    """Token budget of a fast frame: ``fast_ratio`` of the slow frame's real tokens, >= min."""
    return max(int(fast_ratio * slow_tokens), min_tokens)


def largest_fitting(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """Largest ``x`` in [low, high] with ``fits(x)`` for a monotone predicate; None if none fits."""
    if low > high or not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


@dataclass(frozen=True)
class VideoBudget:
    """Frame sizes chosen for one video and the tokens they cost."""

    slow_budget: int
    slow_size: tuple[int, int]
    fast_size: tuple[int, int]
    slow_tokens: int
    fast_tokens: int
    total_tokens: int


def video_token_budget(
    height: int,
    width: int,
    num_slow: int,
    num_fast: int,
    total_tokens: int = 65536,
    min_tokens: int = 48,
    max_tokens: int = 768,
    fast_ratio: float = 0.3,
    factor: int = IMAGE_FACTOR,
) -> VideoBudget:
    """Binary search of the slow-frame budget so all frames fit ``total_tokens`` (REFERENCE §1.1)."""

    def plan(budget: int) -> VideoBudget:
        slow_size = frame_size(height, width, min_tokens, budget, factor)
        slow_tokens = (slow_size[0] // factor) * (slow_size[1] // factor)
        fast_size = frame_size(
            height, width, min_tokens, fast_budget(slow_tokens, fast_ratio, min_tokens), factor
        )
        fast_tokens = (fast_size[0] // factor) * (fast_size[1] // factor)
        total = num_slow * slow_tokens + num_fast * fast_tokens
        return VideoBudget(budget, slow_size, fast_size, slow_tokens, fast_tokens, total)

    best = largest_fitting(lambda b: plan(b).total_tokens <= total_tokens, min_tokens, max_tokens)
    if best is None:
        need = plan(min_tokens).total_tokens
        raise ValueError(
            f"video of {num_slow} slow + {num_fast} fast frames needs {need} tokens even at "
            f"{min_tokens} tokens per frame, over total_tokens={total_tokens}; sample fewer frames"
        )
    return plan(best)


def sample_times(duration: float, fps: float) -> list[float]:
    """Target sampling times 0, 1/fps, ... strictly before ``duration`` (at least one)."""
    count = max(1, math.ceil(duration * fps - 1e-9))
    return [k / fps for k in range(count)]


def uniform_subset(count: int, keep: int) -> list[int]:
    """``keep`` indices spread evenly over ``range(count)`` (first and last included)."""
    if keep >= count:
        return list(range(count))
    if keep == 1:
        return [0]
    return sorted({round(i * (count - 1) / (keep - 1)) for i in range(keep)})


# --------------------------------------------------------------------------- decoding


def decode_video(path: str | Path, fps: float = 2.0) -> tuple[list[np.ndarray], list[float]]:
    """Frames (uint8 HWC RGB) sampled at ``fps`` from a video file, with their times in seconds."""
    import av

    path = Path(str(path).removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot open video {path}: {err}") from err
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        # A frame is taken for target time t when it is the first one at or after t minus half
        # a source frame period: the nearest frame, without looking ahead.
        half_period = 0.5 / rate if rate > 0 else 0.0
        start: float | None = None
        next_target = 0.0
        for frame in container.decode(stream):
            stamp = frame.time if frame.time is not None else len(times) / (rate or fps)
            if start is None:
                start = stamp
            rel = stamp - start
            if rel + half_period + 1e-9 < next_target:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(rel)
            # Skip targets this frame already covers (source slower than the sampling rate).
            while next_target <= rel + half_period + 1e-9:
                next_target += 1.0 / fps
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    return frames, times


# --------------------------------------------------------------------------- processor


@dataclass
class SampledVideo:
    """Decoded frames of one video with their times and Slow/Fast flags."""

    frames: list[np.ndarray]
    timestamps: list[float]
    is_fast: list[bool] = dataclasses.field(default_factory=list)


@dataclass
class KeyeVideoProcessor:
    """Videos -> per-frame patches, ``video_grid_thw`` (one row per frame), fast flags, timestamps."""

    fps: float = field(2.0, help="Sampling rate in frames per second (Keye-VL-1.5: 2 fps).")
    total_tokens: int = field(65536, help="LM token budget of one whole video (REFERENCE §1.1).")
    min_frame_tokens: int = field(48, help="Fewest LM tokens of any frame (slow or fast).")
    max_frame_tokens: int = field(768, help="Most LM tokens of a slow frame.")
    fast_token_ratio: float = field(
        0.3, help="Fast frames get this share of the slow frame's tokens."
    )
    patch_threshold: float = field(
        0.7, help="Cosine similarity above which a 28x28 HSV patch counts as unchanged."
    )
    min_similar_fraction: float = field(
        0.9, help="A frame is fast when this share of its patches is unchanged."
    )
    similarity_max_tokens: int = field(
        256, help="Frames are shrunk to at most this many tokens for the similarity test."
    )
    patch_size: int = field(PATCH_SIZE, help="ViT patch side in pixels.")
    merge_size: int = field(MERGE_SIZE, help="Projector merge factor per side.")
    image_mean: tuple[float, ...] = field(
        (0.5, 0.5, 0.5), help="Per-channel mean after 1/255 rescale."
    )
    image_std: tuple[float, ...] = field(
        (0.5, 0.5, 0.5), help="Per-channel std after 1/255 rescale."
    )

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not 0 < self.min_frame_tokens <= self.max_frame_tokens:
            raise ValueError(
                f"need 0 < min_frame_tokens ({self.min_frame_tokens}) <= max_frame_tokens ({self.max_frame_tokens})"
            )
        if self.total_tokens < self.min_frame_tokens:
            raise ValueError(
                f"total_tokens {self.total_tokens} < min_frame_tokens {self.min_frame_tokens}"
            )

    @property
    def factor(self) -> int:
        """Side multiple: one LM token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def sample_frames(
        self, source: Any, fps: float | None = None, source_fps: float | None = None
    ) -> SampledVideo:
        """Frames at ``fps`` from a file path, or from a list of decoded frames shot at ``source_fps``.

        A list of frames with no ``source_fps`` is taken as already sampled at ``fps``.
        The frame count is capped so that every frame can get at least ``min_frame_tokens``.
        """
        fps = self.fps if fps is None else fps
        if isinstance(source, (str, Path)):
            frames, times = decode_video(source, fps)
        elif isinstance(source, (list, tuple)) and source:
            decoded = [np.asarray(to_rgb(load_image(f), "white")) for f in source]
            if source_fps:
                duration = len(decoded) / source_fps
                picks = sorted(
                    {
                        min(len(decoded) - 1, round(t * source_fps))
                        for t in sample_times(duration, fps)
                    }
                )
                frames = [decoded[i] for i in picks]
                times = [i / source_fps for i in picks]
            else:
                frames, times = decoded, [i / fps for i in range(len(decoded))]
        else:
            raise TypeError(
                f"video must be a file path or a non-empty list of frames, got {type(source).__name__}"
            )
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"video frames differ in size: {sorted(shapes)}")
        height, width = frames[0].shape[:2]
        per_frame_min = frame_tokens(
            height, width, self.min_frame_tokens, self.min_frame_tokens, self.factor
        )
        cap = max(1, self.total_tokens // max(per_frame_min, 1))
        if len(frames) > cap:
            keep = uniform_subset(len(frames), cap)
            frames, times = [frames[i] for i in keep], [times[i] for i in keep]
        return SampledVideo(frames, times, self.fast_flags(frames))

    def fast_flags(self, frames: Sequence[np.ndarray]) -> list[bool]:
        """Slow/Fast flags of same-size uint8 RGB frames (frames shrunk, compared in HSV)."""
        height, width = frames[0].shape[:2]
        small_h, small_w = smart_resize(
            height,
            width,
            self.factor,
            min(self.min_frame_tokens, self.similarity_max_tokens) * self.factor**2,
            self.similarity_max_tokens * self.factor**2,
        )
        shrunk = [
            frame_hsv(
                np.asarray(Image.fromarray(f).resize((small_w, small_h), Image.Resampling.BILINEAR))
            )
            for f in frames
        ]
        return select_fast_frames(
            shrunk, self.patch_threshold, self.min_similar_fraction, self.factor
        )

    def budget(self, video: SampledVideo) -> VideoBudget:
        """Slow and fast frame sizes for this video under ``total_tokens``."""
        height, width = video.frames[0].shape[:2]
        num_fast = sum(video.is_fast)
        return video_token_budget(
            height,
            width,
            len(video.frames) - num_fast,
            num_fast,
            self.total_tokens,
            self.min_frame_tokens,
            self.max_frame_tokens,
            self.fast_token_ratio,
            self.factor,
        )

    def process_sampled(
        self, video: SampledVideo
    ) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
        """Patches of every frame (resized bicubic to its slow or fast size) and per-frame grids."""
        import torch

        plan = self.budget(video)
        scale, shift = normalisation_affine(self.image_mean, self.image_std)
        chunks, grids = [], []
        for frame, fast in zip(video.frames, video.is_fast, strict=True):
            height, width = plan.fast_size if fast else plan.slow_size
            image = Image.fromarray(frame)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            chunks.append(patchify(np.asarray(image), self.patch_size, scale, shift))
            grids.append((1, height // self.patch_size, width // self.patch_size))
        return torch.cat(chunks, dim=0), grids

    def __call__(self, videos: Sequence[Any]) -> dict[str, Any]:
        """``pixel_values_videos``, ``video_grid_thw`` (row per frame), fast flags, times, frames per video."""
        import torch

        if isinstance(videos, (str, Path)):
            videos = [videos]
        if len(videos) == 0:
            raise ValueError("KeyeVideoProcessor: got an empty list of videos")
        chunks, grids, flags, times, counts = [], [], [], [], []
        for index, video in enumerate(videos):
            try:
                sampled = video if isinstance(video, SampledVideo) else self.sample_frames(video)
                patches, frame_grids = self.process_sampled(sampled)
            except (ValueError, TypeError, FileNotFoundError) as err:
                raise type(err)(f"video {index}: {err}") from err
            chunks.append(patches)
            grids.extend(frame_grids)
            flags.extend(sampled.is_fast)
            times.extend(sampled.timestamps)
            counts.append(len(sampled.frames))
        return {
            "pixel_values_videos": torch.cat(chunks, dim=0),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "video_frame_is_fast": torch.tensor(flags, dtype=torch.bool),
            "video_timestamps": torch.tensor(times, dtype=torch.float32),
            "video_num_frames": torch.tensor(counts, dtype=torch.long),
        }

    def num_tokens(self, grid_thw: Sequence[int]) -> int:
        """LM tokens (placeholders) of one frame grid."""
        t, h, w = (int(v) for v in grid_thw)
        return t * h * w // (self.merge_size**2)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``video_preprocessor_config.json`` into ``directory``."""
        path = Path(directory) / VIDEO_PREPROCESSOR_CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"processor_class": "KeyeVideoProcessor", **to_dict(self)}, indent=2) + "\n"
        )
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> KeyeVideoProcessor:
        """Read settings from ``directory/video_preprocessor_config.json`` (defaults when absent)."""
        path = Path(directory) / VIDEO_PREPROCESSOR_CONFIG
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return from_dict(cls, {k: v for k, v in data.items() if k in known})


__all__ = [
    "PIXELS_PER_TOKEN",
    "KeyeVideoProcessor",
    "SampledVideo",
    "VideoBudget",
    "decode_video",
    "patch_similarity",
    "rgb_to_hsv_u8",
    "select_fast_frames",
    "video_token_budget",
]
