"""Tests of keye_model.processing: resize math, patches, parity with keye-vl-utils, video
Slow-Fast selection and budget, chat template, thinking parsing, tokenizer and processor."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from keye_model.processing import (
    CHAT_TEMPLATE,
    KeyeImageProcessor,
    KeyeProcessor,
    KeyeVideoProcessor,
    apply_chat_template,
    build_tiny_tokenizer,
    image_token_count,
    parse_thinking,
    smart_resize,
)
from keye_model.processing.image import KEYE_VL_UTILS_MAX_PIXELS, MODEL_CARD_MAX_PIXELS
from keye_model.processing.tokens import SPECIAL_TOKENS
from keye_model.processing.video import (
    SampledVideo,
    decode_video,
    largest_fitting,
    patch_similarity,
    rgb_to_hsv_u8,
    select_fast_frames,
    video_token_budget,
)
from tests.conftest import FIXTURES
from tests.peer import load_keye_vl_utils

IMAGE_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".jpg", ".jpeg", ".png"))
RGBA_FILES = ("sglang_logo.png", "kfp_ui_screenshot.png", "deepseek_benchmark_chart.png")


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    """Copies of the real fixtures, so tests never touch the shared originals."""
    target = tmp_path_factory.mktemp("fixtures")
    for name in [*IMAGE_FILES, "video1.mp4", "video4.mp4"]:
        shutil.copy(FIXTURES / name, target / name)
    return target


@pytest.fixture(scope="module")
def keye_vl_utils():
    return load_keye_vl_utils()


@pytest.fixture(scope="module")
def processor() -> KeyeProcessor:
    return KeyeProcessor(build_tiny_tokenizer())


# --------------------------------------------------------------------------- smart_resize


def test_smart_resize_matches_released_formula_on_a_size_grid(keye_vl_utils):
    sizes = [1, 2, 13, 14, 27, 28, 29, 41, 42, 43, 55, 56, 70, 97, 224, 333, 1000, 4096, 9999]
    for max_pixels in (MODEL_CARD_MAX_PIXELS, KEYE_VL_UTILS_MAX_PIXELS, 256 * 784):
        for h in sizes:
            for w in sizes:
                if max(h, w) / min(h, w) > 200:
                    continue
                ours = smart_resize(h, w, max_pixels=max_pixels)
                ref = keye_vl_utils.smart_resize(h, w, max_pixels=max_pixels)
                assert ours == ref, (h, w, max_pixels)


def test_smart_resize_tiny_image_grows_to_min_pixels():
    h, w = smart_resize(10, 10)
    assert (h, w) == (56, 56)  # 4 tokens = 3136 px, the minimum
    assert h * w >= 3136 and h % 28 == 0 and w % 28 == 0
    assert smart_resize(1, 1) == (56, 56)


def test_smart_resize_huge_image_is_capped():
    h, w = smart_resize(20000, 15000)
    assert h * w <= MODEL_CARD_MAX_PIXELS and h % 28 == 0 and w % 28 == 0
    assert abs((h / w) - (20000 / 15000)) < 0.02
    h2, w2 = smart_resize(20000, 15000, max_pixels=KEYE_VL_UTILS_MAX_PIXELS)
    assert MODEL_CARD_MAX_PIXELS < h2 * w2 <= KEYE_VL_UTILS_MAX_PIXELS


def test_smart_resize_rejects_extreme_aspect_with_clear_message():
    with pytest.raises(ValueError, match=r"aspect ratio 300\.0 .*limit 200"):
        smart_resize(1, 300)
    assert smart_resize(28, 28 * 200)  # exactly 200 is allowed


def test_smart_resize_rounds_ties_to_even():
    # 42/28 = 1.5 -> 2 (even); 70/28 = 2.5 -> 2 (even, not 3); 98/28 = 3.5 -> 4.
    assert smart_resize(42, 280)[0] == 56
    assert smart_resize(70, 280)[0] == 56
    assert smart_resize(98, 280)[0] == 112


def test_smart_resize_side_is_at_least_one_factor():
    h, w = smart_resize(28, 28 * 199, max_pixels=28 * 28 * 50)
    assert h >= 28 and w >= 28


def test_image_token_count():
    assert image_token_count(224, 224) == 64
    assert image_token_count(10, 10) == 4
    assert image_token_count(448, 672) == 16 * 24
    assert image_token_count(20000, 20000) <= 16384
    assert image_token_count(20000, 20000, max_pixels=KEYE_VL_UTILS_MAX_PIXELS) <= 20480


# --------------------------------------------------------------------------- image processor


def test_known_pixel_value_is_normalised():
    image = Image.new("RGB", (84, 56), (255, 0, 128))  # 2x3 tokens, no resize
    out = KeyeImageProcessor()([image])
    values = out["pixel_values"]
    assert values.dtype == torch.float32 and values.shape == (24, 3, 14, 14)
    expected = [(c / 255 - 0.5) / 0.5 for c in (255, 0, 128)]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(values[:, channel], torch.full((24, 14, 14), value))
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_per_channel_mean_and_std():
    ip = KeyeImageProcessor(image_mean=(0.4, 0.5, 0.6), image_std=(0.2, 0.3, 0.4))
    values = ip([Image.new("RGB", (56, 56), (10, 120, 250))])["pixel_values"]
    for channel, (c, m, sd) in enumerate(
        zip((10, 120, 250), (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), strict=True)
    ):
        assert torch.allclose(values[:, channel], torch.tensor((c / 255 - m) / sd), atol=1e-6)


def test_patches_are_in_raster_order_against_a_hand_built_reference():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)  # no resize: 2x3 tokens
    out = KeyeImageProcessor()([pixels])
    gh, gw = 56 // 14, 84 // 14
    reference = []
    for row in range(gh):
        for col in range(gw):
            block = pixels[row * 14 : (row + 1) * 14, col * 14 : (col + 1) * 14]  # (14, 14, 3)
            reference.append((block.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)
    expected = torch.tensor(np.stack(reference), dtype=torch.float32)
    torch.testing.assert_close(out["pixel_values"], expected)
    assert out["image_grid_thw"].tolist() == [[1, gh, gw]]


def test_several_images_concatenate_with_one_grid_row_each(fixture_dir):
    ip = KeyeImageProcessor()
    images = [
        fixture_dir / "cat.jpg",
        Image.new("L", (30, 40), 7),
        np.zeros((100, 60, 3), np.uint8),
    ]
    out = ip(images)
    grids = out["image_grid_thw"]
    assert grids.shape == (3, 3) and grids.dtype == torch.long and (grids[:, 0] == 1).all()
    assert out["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    cat_only = ip([fixture_dir / "cat.jpg"])["pixel_values"]
    torch.testing.assert_close(out["pixel_values"][: cat_only.shape[0]], cat_only)


def test_modes_convert_to_rgb_and_alpha_composites_on_white():
    transparent = Image.new("RGBA", (28, 28), (10, 20, 30, 0))
    white = KeyeImageProcessor()([transparent])["pixel_values"]
    assert torch.allclose(white, torch.ones_like(white))  # fully transparent -> white -> 1.0
    dropped = KeyeImageProcessor(alpha_mode="drop")([transparent])["pixel_values"]
    torch.testing.assert_close(
        dropped[0, :, 0, 0], torch.tensor([c / 127.5 - 1 for c in (10, 20, 30)])
    )
    palette = Image.new("P", (28, 28), 3)
    palette.putpalette([0, 0, 0] * 3 + [200, 100, 50] + [0, 0, 0] * 252)
    pv = KeyeImageProcessor()([palette])["pixel_values"]
    torch.testing.assert_close(
        pv[0, :, 0, 0], torch.tensor([c / 127.5 - 1 for c in (200, 100, 50)])
    )
    gray = KeyeImageProcessor()([Image.new("L", (28, 28), 51)])["pixel_values"]
    assert torch.allclose(gray, torch.full_like(gray, 51 / 127.5 - 1))


def test_bad_image_inputs_fail_with_clear_errors(tmp_path):
    ip = KeyeImageProcessor()
    with pytest.raises(FileNotFoundError, match="image 0: image file not found"):
        ip([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="uint8"):
        ip([np.zeros((28, 28, 3), np.float32)])
    with pytest.raises(ValueError, match="aspect ratio"):
        ip([Image.new("RGB", (300, 1))])
    with pytest.raises(ValueError, match="alpha_mode"):
        KeyeImageProcessor(alpha_mode="black")


def test_image_processor_settings_round_trip(tmp_path):
    ip = KeyeImageProcessor(max_pixels=KEYE_VL_UTILS_MAX_PIXELS, alpha_mode="drop")
    path = ip.save_pretrained(tmp_path)
    assert path.name == "preprocessor_config.json"
    assert KeyeImageProcessor.from_pretrained(tmp_path) == ip


@pytest.mark.parametrize("name", IMAGE_FILES)
def test_parity_with_keye_vl_utils(name, fixture_dir, keye_vl_utils):
    """Same resized size and pixel values as keye-vl-utils' fetch_image + the released
    normalisation (rescale 1/255, mean = std = 0.5, raster 14x14 patches)."""
    with Image.open(fixture_dir / name) as opened:
        opened.load()
        image = opened
    # keye-vl-utils drops alpha (Image.convert("RGB")); "drop" reproduces it exactly.
    ours = KeyeImageProcessor(max_pixels=KEYE_VL_UTILS_MAX_PIXELS, alpha_mode="drop")([image])
    resized = keye_vl_utils.fetch_image({"image": image})
    ref = (np.asarray(resized).astype(np.float32) / 255.0 - 0.5) / 0.5
    height, width, _ = ref.shape
    _, gh, gw = ours["image_grid_thw"][0].tolist()
    assert (gh * 14, gw * 14) == (height, width)
    ref_patches = ref.reshape(gh, 14, gw, 14, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, 14, 14)
    torch.testing.assert_close(
        ours["pixel_values"], torch.from_numpy(ref_patches), atol=1e-5, rtol=0
    )
    if name in RGBA_FILES:
        # White compositing changes only pixels that were not fully opaque.
        white = KeyeImageProcessor(max_pixels=KEYE_VL_UTILS_MAX_PIXELS)([image])["pixel_values"]
        assert white.shape == ours["pixel_values"].shape
        if image.getchannel("A").getextrema()[0] == 255:
            torch.testing.assert_close(white, ours["pixel_values"])


# --------------------------------------------------------------------------- video


def test_hsv_matches_opencv_convention():
    import cv2

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    rgb[0, 0] = (0, 0, 0)
    rgb[0, 1] = (255, 255, 255)
    ours = rgb_to_hsv_u8(rgb).astype(int)
    ref = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(int)
    hue_diff = np.minimum(abs(ours[..., 0] - ref[..., 0]), 180 - abs(ours[..., 0] - ref[..., 0]))
    assert hue_diff.max() <= 1 and abs(ours[..., 1:] - ref[..., 1:]).max() <= 1


def test_patch_similarity_and_fast_selection_are_pure_formulas():
    rng = np.random.default_rng(2)
    a = rng.integers(1, 256, size=(56, 56, 3), dtype=np.uint8)
    assert patch_similarity(a, a) == 1.0
    b = a.copy()
    b[:28, :28] = 0
    b[:28, :28, 0] = 255  # one of four patches becomes pure red: cosine drops below 0.7
    assert patch_similarity(a, b) == pytest.approx(0.75)
    black = np.zeros_like(a)
    assert patch_similarity(black, black) == 1.0  # all-zero patches carry no signal
    assert select_fast_frames([a, a, b, b, a]) == [False, True, False, True, False]
    assert select_fast_frames([a, b], min_similar_fraction=0.7) == [False, True]


def test_budget_search_returns_largest_fitting_budget():
    assert largest_fitting(lambda x: x <= 300, 48, 768) == 300
    assert largest_fitting(lambda x: True, 48, 768) == 768
    assert largest_fitting(lambda x: False, 48, 768) is None
    plan = video_token_budget(720, 1280, num_slow=20, num_fast=200, total_tokens=16384)
    assert plan.total_tokens <= 16384
    bigger = video_token_budget(720, 1280, 20, 200, total_tokens=10**9)
    assert bigger.slow_budget == 768 and bigger.slow_tokens <= 768
    if plan.slow_budget < 768:
        over = video_token_budget(720, 1280, 20, 200, total_tokens=plan.total_tokens)
        assert over.slow_budget == plan.slow_budget  # the same plan is still the largest that fits
    assert 48 <= plan.fast_tokens <= max(48, int(0.3 * plan.slow_tokens))
    assert plan.slow_tokens >= 48
    with pytest.raises(ValueError, match="needs .* tokens even at 48"):
        video_token_budget(720, 1280, 2000, 0, total_tokens=65536)


@pytest.mark.parametrize(("name", "duration"), [("video1.mp4", 11.75), ("video4.mp4", 22.43)])
def test_real_video_sampling_and_budget(name, duration, fixture_dir, keye_vl_utils):
    vp = KeyeVideoProcessor()
    sampled = vp.sample_frames(fixture_dir / name)
    assert abs(len(sampled.frames) - 2 * duration) <= 1.5
    steps = np.diff(sampled.timestamps)
    assert sampled.timestamps[0] == 0.0 and np.allclose(steps, 0.5, atol=0.05)
    assert sampled.is_fast[0] is False
    # Same Slow/Fast decisions as the released implementation on the same frames.
    frames = torch.from_numpy(np.stack(sampled.frames)).permute(0, 3, 1, 2)
    ref = keye_vl_utils.extract_slow_fast_frames(frames).tolist()
    assert [int(f) for f in sampled.is_fast] == ref
    out = vp([sampled])
    tokens = int(out["video_grid_thw"].prod(dim=1).sum()) // 4
    assert tokens <= vp.total_tokens
    assert out["pixel_values_videos"].shape == (tokens * 4, 3, 14, 14)
    assert out["video_grid_thw"].shape == (len(sampled.frames), 3)
    assert (out["video_grid_thw"][:, 0] == 1).all()
    per_frame = out["video_grid_thw"].prod(dim=1) // 4
    assert per_frame.min() >= 48 and per_frame.max() <= 768
    fast = out["video_frame_is_fast"]
    if fast.any() and (~fast).any():
        assert per_frame[fast].max() < per_frame[~fast].min()
    # A tight budget shrinks frames and is still respected.
    tight = KeyeVideoProcessor(total_tokens=3000)([sampled])
    assert int(tight["video_grid_thw"].prod(dim=1).sum()) // 4 <= 3000


def test_static_video_gives_fast_frames_and_changing_video_slow_frames():
    rng = np.random.default_rng(3)
    still = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    vp = KeyeVideoProcessor()
    static = vp.sample_frames([still] * 6)
    assert static.is_fast == [False, True, True, True, True, True]
    assert static.timestamps == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    # A 28px checkerboard whose phase flips each frame: every patch swaps white <-> black.
    # (Random noise would not do: HSV vectors of noise stay cosine-similar above 0.7.)
    rows, cols = np.indices((112, 168)) // 28
    board = np.where(((rows + cols) % 2 == 0)[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    changing = vp.sample_frames([board, 255 - board, board, 255 - board])
    assert changing.is_fast == [False] * 4
    thirty = vp.sample_frames([still] * 30, source_fps=10.0)  # 3 s at 10 fps -> 6 frames
    assert len(thirty.frames) == 6 and thirty.timestamps[1] == pytest.approx(0.5)


def test_decode_synthetic_file_with_known_timing(tmp_path):
    import av

    path = tmp_path / "ramp.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(40):  # 4 seconds at 10 fps
            frame = av.VideoFrame.from_ndarray(
                np.full((48, 64, 3), i * 6, np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames, times = decode_video(path, fps=2.0)
    assert len(frames) == 8 and times == pytest.approx([0.5 * k for k in range(8)])
    assert frames[0].shape == (48, 64, 3)
    with pytest.raises(FileNotFoundError, match="video file not found"):
        decode_video(tmp_path / "nope.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        decode_video(tmp_path / "bad.mp4")


# --------------------------------------------------------------------------- chat template

USER = [
    {
        "role": "user",
        "content": [
            {"type": "image", "image": "x.jpg"},
            {"type": "text", "text": "Describe this image."},
        ],
    }
]
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
BODY = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("mode", "suffix"), [("think", "/think"), ("no_think", "/no_think"), ("auto", "")]
)
def test_chat_template_thinking_modes_exact(mode, suffix, processor):
    text = apply_chat_template(USER, thinking=mode)
    assert text == SYSTEM + BODY.format(suffix)
    jinja = processor.tokenizer.apply_chat_template(
        USER, tokenize=False, add_generation_prompt=True, thinking=mode
    )
    assert jinja == text


def test_chat_template_cases_match_the_jinja_twin(processor):
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>easy</think>4"},
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": "v.mp4"},
                    {"type": "image_url", "image_url": {"url": "u"}},
                ],
            },
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image"},
                    {"type": "text", "text": "b"},
                ],
            }
        ],
        [
            {
                "role": "user",
                "content": [{"image": "a.jpg"}, {"video": "b.mp4"}, {"text": "untyped"}],
            }
        ],
    ]
    for messages in conversations:
        for mode in ("think", "no_think", "auto"):
            for gen in (True, False):
                ours = apply_chat_template(messages, add_generation_prompt=gen, thinking=mode)
                jinja = processor.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=gen, thinking=mode
                )
                assert ours == jinja, (messages, mode, gen)
    assert apply_chat_template(conversations[0], add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    # No text part in the last user turn: the suffix becomes its own text after the media.
    assert apply_chat_template(conversations[1], thinking="no_think").endswith(
        "<|vision_start|><|video_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "/no_think<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "{%" in CHAT_TEMPLATE


def test_chat_template_rejects_bad_messages():
    with pytest.raises(ValueError, match="thinking"):
        apply_chat_template(USER, thinking="deep")
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        apply_chat_template([{"content": "hi"}])
    with pytest.raises(ValueError, match="unknown content part type 'audio'"):
        apply_chat_template([{"role": "user", "content": [{"type": "audio"}]}])


def test_parse_thinking():
    assert parse_thinking("<think>\nstep 1\n</think>\n\nThe answer is 4.") == (
        "step 1",
        "The answer is 4.",
    )
    assert parse_thinking("The answer is 4.") == (None, "The answer is 4.")
    assert parse_thinking("reasoning without opener</think>B") == ("reasoning without opener", "B")
    assert parse_thinking("<think>cut off mid-thought") == ("cut off mid-thought", "")
    assert parse_thinking("<think></think>A") == ("", "A")


# --------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_special_ids_and_round_trip():
    tok = build_tiny_tokenizer()
    assert len(tok) == 2048
    for index, token in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == index
        assert tok.encode(token, add_special_tokens=False) == [index]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    for text in [
        "Hello world! 2x + 3 = 11, so x = 4.",
        "你好，世界！这是一张图片。",
        "émoji 🙂 and \\frac{1}{2}",
    ]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = tok.encode("<think>hm</think>B<|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<think>hm</think>B"


def test_tiny_tokenizer_is_deterministic_and_trained_once_per_process():
    from keye_model.processing.tokenizer import _trained_tokenizer_json

    first = _trained_tokenizer_json.__wrapped__(2048)
    assert _trained_tokenizer_json.__wrapped__(2048) == first  # retraining: the same vocabulary
    cached = _trained_tokenizer_json(2048)
    assert cached == first
    misses = _trained_tokenizer_json.cache_info().misses
    assert _trained_tokenizer_json(2048) is cached  # later builds reuse it: no retraining
    assert build_tiny_tokenizer(2048).get_vocab() == build_tiny_tokenizer(2048).get_vocab()
    assert _trained_tokenizer_json.cache_info().misses == misses
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_tokenizer(100)


# --------------------------------------------------------------------------- processor


def test_processor_expands_image_pads_to_feature_count(processor, fixture_dir):
    prompt = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "image"},
                    {"type": "text", "text": "Compare."},
                ],
            }
        ]
    )
    images = [fixture_dir / "cat.jpg", fixture_dir / "img3.jpg"]
    out = processor(prompt, images=images)
    nested = processor([prompt], images=[images])  # one list of images per sample
    assert torch.equal(nested["input_ids"], out["input_ids"])
    grids = out["image_grid_thw"]
    pads = int((out["input_ids"] == processor.image_token_id).sum())
    assert pads == out["pixel_values"].shape[0] // 4 == int(grids.prod(dim=1).sum()) // 4
    # Each image's run sits between its own vision_start/vision_end pair.
    ids = out["input_ids"][0].tolist()
    starts = [i for i, t in enumerate(ids) if t == processor.vision_start_token_id]
    ends = [i for i, t in enumerate(ids) if t == processor.vision_end_token_id]
    runs = [e - s - 1 for s, e in zip(starts, ends, strict=True)]
    assert runs == [int(g.prod()) // 4 for g in grids]


def test_processor_video_expansion_and_frame_markers(processor, fixture_dir):
    prompt = apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Summarise."}]}]
    )
    out = processor(prompt, videos=[fixture_dir / "video1.mp4"])
    ids = out["input_ids"][0]
    slow = int((ids == processor.video_token_id).sum())
    fast = int((ids == processor.fast_video_token_id).sum())
    assert slow + fast == out["pixel_values_videos"].shape[0] // 4
    per_frame = (out["video_grid_thw"].prod(dim=1) // 4).tolist()
    flags = out["video_frame_is_fast"].tolist()
    assert slow == sum(n for n, f in zip(per_frame, flags, strict=True) if not f)
    assert int((ids == processor.frame_token_id).sum()) == len(per_frame)
    assert int((ids == processor.token_ids["<|fast_start|>"]).sum()) == sum(flags)
    text = processor.decode(ids)
    assert "<|frame|>0.0 seconds<|video_pad|>" in text
    assert "<|frame|>0.5 seconds<|fast_start|><|fast_video_pad|>" in text


def test_processor_placeholder_mismatch_is_a_clear_error(processor, fixture_dir):
    prompt = apply_chat_template(USER)
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholders but 2 images"):
        processor(prompt, images=[fixture_dir / "cat.jpg"] * 2)
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholders but 0 images"):
        processor(prompt)
    with pytest.raises(ValueError, match="0 <\\|video_pad\\|> placeholders but 1 videos"):
        processor(prompt, images=[fixture_dir / "cat.jpg"], videos=[fixture_dir / "video1.mp4"])


def test_processor_batch_padding_sides(processor):
    texts = [
        apply_chat_template([{"role": "user", "content": "Hi"}]),
        apply_chat_template([{"role": "user", "content": "A much longer question here?"}]),
    ]
    left = processor(texts)
    assert left["input_ids"].shape[0] == 2
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    assert left["input_ids"][0, 0] == processor.tokenizer.pad_token_id
    right = processor(texts, padding_side="right")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0
    short = right["input_ids"][0][right["attention_mask"][0].bool()]
    assert processor.batch_decode([short])[0] == texts[0]
    with pytest.raises(ValueError, match="padding=True"):
        processor(texts, padding=False)


def test_processor_save_and_load_round_trip(processor, fixture_dir, tmp_path):
    custom = KeyeProcessor(
        processor.tokenizer,
        KeyeImageProcessor(max_pixels=256 * 784),
        KeyeVideoProcessor(total_tokens=4096),
        padding_side="right",
    )
    custom.save_pretrained(tmp_path / "model")
    loaded = KeyeProcessor.from_pretrained(tmp_path / "model")
    assert loaded.image_processor == custom.image_processor
    assert loaded.video_processor == custom.video_processor
    assert loaded.padding_side == "right"
    prompt = apply_chat_template(USER, thinking="think")
    a = custom(prompt, images=[fixture_dir / "img9.jpg"])
    b = loaded(prompt, images=[fixture_dir / "img9.jpg"])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(
        a["pixel_values"], b["pixel_values"]
    )
    assert loaded.tokenizer.apply_chat_template(
        USER, tokenize=False, add_generation_prompt=True
    ) == apply_chat_template(USER)
    assert math.prod(a["image_grid_thw"][0].tolist()) // 4 <= 256
    with pytest.raises(FileNotFoundError, match="processor directory not found"):
        KeyeProcessor.from_pretrained(tmp_path / "absent")


def test_sampled_video_passes_through(processor):
    still = np.full((56, 84, 3), 90, np.uint8)
    video = SampledVideo([still, still], [0.0, 0.5], [False, True])
    out = processor.video_processor([video])
    assert out["video_frame_is_fast"].tolist() == [False, True]


def test_batch_pairs_images_with_pads_in_text_order(processor, fixture_dir):
    one = apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "A?"}]}]
    )
    two = apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "B?"}],
            }
        ]
    )
    images = [fixture_dir / "img1.png", fixture_dir / "keye_post1.jpeg", fixture_dir / "img3.jpg"]
    out = processor([one, two], images=images)
    per_image = [int(g.prod()) // 4 for g in out["image_grid_thw"]]
    pads = (out["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert pads == [per_image[0], per_image[1] + per_image[2]]
    assert out["attention_mask"].sum(dim=1).tolist() == [
        len(processor.tokenizer.encode(one)) + per_image[0] - 1,
        len(processor.tokenizer.encode(two)) + per_image[1] + per_image[2] - 2,
    ]


def test_package_exports():
    import keye_model.processing as processing

    for name in (
        "smart_resize",
        "image_token_count",
        "KeyeImageProcessor",
        "KeyeVideoProcessor",
        "KeyeProcessor",
        "build_tiny_tokenizer",
        "apply_chat_template",
        "parse_thinking",
    ):
        assert callable(getattr(processing, name)), name
    with pytest.raises(AttributeError):
        processing.not_a_name  # noqa: B018
