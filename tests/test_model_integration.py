"""Processor + model together on real photos and a real video: pads and features line up."""

from __future__ import annotations

import torch

from keye_model import KeyeVLMoeConfig, KeyeVLMoeForConditionalGeneration
from keye_model.processing import (
    KeyeImageProcessor,
    KeyeProcessor,
    KeyeVideoProcessor,
    build_tiny_tokenizer,
)
from tests.conftest import FIXTURES


def tiny_processor() -> KeyeProcessor:
    return KeyeProcessor(
        build_tiny_tokenizer(),
        KeyeImageProcessor(max_pixels=64 * 28 * 28),
        KeyeVideoProcessor(total_tokens=400, max_frame_tokens=64, min_frame_tokens=8),
    )


def test_real_images_and_video_run_through_the_tiny_model(real_images):
    torch.manual_seed(0)
    model = KeyeVLMoeForConditionalGeneration(KeyeVLMoeConfig.from_preset("tiny")).eval()
    processor = tiny_processor()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "video"},
                {"type": "text", "text": "What changes between the pictures and the clip?"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(
        messages, add_generation_prompt=True, thinking="no_think"
    )
    images = [
        real_images["cat.jpg"],
        real_images["keye_post1.jpeg"],
    ]  # square-ish and a wide banner
    inputs = processor(prompt, images=images, videos=[FIXTURES / "video1.mp4"])
    ids = inputs["input_ids"]
    cfg = model.config
    # Every pad position gets exactly one projector output: image pads for images, both video pads for frames.
    assert (
        int((ids == cfg.image_token_id).sum()) == int(inputs["image_grid_thw"].prod(-1).sum()) // 4
    )
    n_video = int(
        torch.isin(ids, torch.tensor([cfg.video_token_id, cfg.fast_video_token_id])).sum()
    )
    assert n_video == int(inputs["video_grid_thw"].prod(-1).sum()) // 4
    assert len(inputs["video_grid_thw"]) > 1  # one attention sequence (grid row) per sampled frame

    with torch.no_grad():
        out = model(**inputs)
        assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.logits).all()
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    text = processor.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
    assert generated.shape[1] == ids.shape[1] + 4 and isinstance(text[0], str)
