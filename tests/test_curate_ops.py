"""Unit tests of the curation operators, the near-duplicate indexes and the mixture maths."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from curate_corpus import FIXTURES, decompression_bomb, encode, noise_image, truncated_jpeg
from PIL import Image

from keye_model.data.config import CurateConfig, FilterConfig, MixtureConfig
from keye_model.data.dedup import (
    DedupPlan,
    decide,
    kind_edges,
    phash_code,
    route_rows,
    signature,
    signature_table,
)
from keye_model.data.mixture import repeat_factors, repeats, target_shares
from keye_model.data.operators import (
    ClipScore,
    ClipScorer,
    Decode,
    ImageSize,
    Language,
    TextQuality,
    item_tokens,
)
from keye_model.data.records import Media, Sample, media_marker_error, prose
from keye_model.processing import image_token_count
from keye_model.processing.chat import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER


def sample(
    media: bytes | None,
    text: str = "A plain English caption describing the picture.",
    ext: str = "png",
    **kw,
) -> Sample:
    return Sample(
        key=kw.pop("key", "k"),
        source="test",
        category=kw.pop("category", "caption"),
        media=media,
        media_ext=ext,
        text=text,
        **kw,
    )


def test_decode_names_each_corruption(real_images):
    decode = Decode(FilterConfig(max_image_pixels=50_000_000))
    photo = real_images["cat.jpg"].read_bytes()
    assert decode(sample(b"")).reason == "empty_file"
    assert decode(sample(None)).reason == "no_media"
    assert decode(sample(b"GIF89a but not really" * 3)).reason == "not_an_image"
    assert decode(sample(truncated_jpeg(photo), ext="jpg")).reason == "truncated_image"
    # Far above PIL's 2x limit (PIL raises) and just above the cap (PIL only warns): both rejected.
    assert decode(sample(decompression_bomb(40000, 40000))).reason == "decompression_bomb"
    assert decode(sample(decompression_bomb(8000, 7000))).reason == "decompression_bomb"
    assert Image.MAX_IMAGE_PIXELS == 50_000_000  # set deliberately by the operator
    good = sample(photo, ext="jpg")
    assert (
        decode(good) is None and (good.width, good.height) == (640, 480) and good.image is not None
    )
    rgba = sample(real_images["sglang_logo.png"].read_bytes())
    assert decode(rgba) is None and rgba.width == 2392


@pytest.mark.parametrize("name", ["img_pair_1.jpg", "sglang_logo.png"])
def test_decode_keeps_a_reduced_copy_that_hashes_like_full_size(real_images, name):
    """JPEGs decode at a DCT scale, PNGs are box-reduced: at least decode_side px a side remain,
    the sample keeps the file's own size, and pHash stays within a few bits of a full decode."""
    data = real_images[name].read_bytes()
    full, small = sample(data, ext=name.rsplit(".", 1)[1]), sample(data, ext=name.rsplit(".", 1)[1])
    assert Decode(FilterConfig(decode_side=0))(full) is None
    assert Decode(FilterConfig(decode_side=224))(small) is None
    assert (small.width, small.height) == (full.width, full.height) == full.image.size
    assert 224 <= min(small.image.size) < min(full.image.size) // 2
    distance = bin(phash_code(full.image, 16) ^ phash_code(small.image, 16)).count("1")
    assert distance <= 8, distance  # the near-duplicate radius is 18 of 256 bits


def test_decode_side_below_what_the_operators_need_is_refused():
    cfg = CurateConfig(filters=FilterConfig(decode_side=48))
    with pytest.raises(ValueError, match=r"curate\.filters\.decode_side: 48 .* 64 px"):
        cfg.validate()
    clip = dataclasses.replace(
        CurateConfig(filters=FilterConfig(decode_side=128, clip_model="m")),
        operators=[*CurateConfig().operators, "clip_score"],
    )
    with pytest.raises(ValueError, match=r"decode_side: 128 .* 224 px"):
        clip.validate()
    CurateConfig(filters=FilterConfig(decode_side=0)).validate()  # full size is always enough


def test_interleaved_sample_is_checked_image_by_image(real_images):
    cfg = FilterConfig()
    decode, size = Decode(cfg), ImageSize(cfg)
    photos = [real_images[n].read_bytes() for n in ("cat.jpg", "img3.jpg", "img1.png")]
    doc = f"{IMAGE_PLACEHOLDER} Two cats. {IMAGE_PLACEHOLDER} A rainy alley. {IMAGE_PLACEHOLDER} A bed."

    def interleaved(third: bytes, ext: str = "png") -> Sample:
        s = sample(None, doc, category="interleaved")
        s.set_media([Media("jpg", photos[0]), Media("jpg", photos[1]), Media(ext, third)])
        return s

    good = interleaved(photos[2])
    assert decode(good) is None and size(good) is None
    assert good.media_dims == [(640, 480, 0.0), (342, 500, 0.0), (336, 336, 0.0)]
    tokens = [
        image_token_count(h, w, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
        for w, h, _ in good.media_dims
    ]
    assert good.image_tokens == sum(tokens) and len(set(tokens)) == 3
    # A document's first picture is not the document: no pixels kept for pHash / CLIP.
    assert good.image is None and (good.width, good.height) == (640, 480)
    assert good.full_text() == "Two cats. A rainy alley. A bed."

    for bad, reason in (
        (truncated_jpeg(photos[0]), "truncated_image"),
        (b"", "empty_file"),
        (decompression_bomb(), "decompression_bomb"),
        (b"<html>no picture</html>", "not_an_image"),
    ):
        verdict = decode(interleaved(bad, "jpg"))
        assert verdict.reason == reason and verdict.detail.startswith("image 3 of 3 (jpg): ")
    tiny = interleaved(encode(noise_image(5, 20, 300)))
    assert decode(tiny) is None
    verdict = size(tiny)
    assert verdict.reason == "too_small" and verdict.detail.startswith("image 3 of 3: 20x300")


def test_interleaved_video_item_counts_its_frames(real_images):
    cfg = FilterConfig()
    video = (FIXTURES / "video1.mp4").read_bytes()
    s = sample(None, f"{IMAGE_PLACEHOLDER} A cat. {VIDEO_PLACEHOLDER} A clip.")
    s.set_media([Media("jpg", real_images["cat.jpg"].read_bytes()), Media("mp4", video)])
    assert Decode(cfg)(s) is None and ImageSize(cfg)(s) is None
    (w0, h0, _), (w1, h1, seconds) = s.media_dims
    assert seconds > 0
    assert s.image_tokens == item_tokens(w0, h0, 0, False, cfg) + item_tokens(
        w1, h1, seconds, True, cfg
    )
    assert item_tokens(w1, h1, seconds, True, cfg) > item_tokens(w1, h1, 0, False, cfg)


def test_media_placeholders_match_media_and_survive_the_shard_round_trip():
    s = sample(None, f"{IMAGE_PLACEHOLDER} one {IMAGE_PLACEHOLDER} two", key="doc")
    s.set_media([Media("jpg", b"a"), Media("png", b"b")])
    assert media_marker_error(s) is None
    members = dict(s.members())
    assert list(members) == ["doc.jpg", "doc.1.png", "doc.json", "doc.txt"]
    assert members["doc.txt"] == b"one two"
    back = Sample.from_members(
        "doc", {name.split(".", 1)[1]: data for name, data in members.items()}
    )
    assert back.media_items() == s.media_items() and back.text == s.text
    # The hash sees every image; a one-image sample hashes as it always did.
    other = dataclasses.replace(s, extra_media=[Media("png", b"c")])
    assert other.content_hash() != s.content_hash()
    s.set_media([Media("jpg", b"a")])
    assert "2 images but the sample has 1 image" in media_marker_error(s)
    s.text = f"{IMAGE_PLACEHOLDER} one {VIDEO_PLACEHOLDER} two"
    s.set_media([Media("mp4", b"a"), Media("jpg", b"b")])
    assert "order" in media_marker_error(s)
    assert prose(f"{IMAGE_PLACEHOLDER}\nWhat is shown?") == "What is shown?"
    assert prose("no placeholder  here ") == "no placeholder  here "


@pytest.mark.parametrize(
    "size,reason",
    [
        ((27, 400), "too_small"),
        ((28, 28 * 200), None),
        ((28, 28 * 201), "extreme_aspect"),
        ((640, 480), None),
        ((4000, 3000), None),
    ],
)
def test_image_size_bounds_match_smart_resize(size, reason):
    cfg = FilterConfig()
    s = sample(None)
    s.width, s.height = size
    verdict = ImageSize(cfg)(s)
    assert (verdict.reason if verdict else None) == reason
    if reason is None:
        assert s.image_tokens == image_token_count(
            size[1], size[0], min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
        )
        assert 4 <= s.image_tokens <= 16384


def test_text_quality_and_language():
    quality, language = TextQuality(FilterConfig()), Language(FilterConfig())
    ok = sample(None, "Two children play football on a green field near a school building.")
    assert quality(ok) is None and language(ok) is None
    assert quality(sample(None, "hi")).reason == "text_too_short"
    assert quality(sample(None, "click here " * 20)).reason == "text_repetitive"
    assert quality(sample(None, "$$$ ### @@@ !!! %%% ^^^ &&& *** a")).reason == "text_low_alnum"
    assert (
        language(
            sample(None, "Ein Hund läuft über die Wiese und spielt mit einem roten Ball im Garten.")
        ).reason
        == "language"
    )
    assert (
        language(sample(None, "一只小猫坐在窗台上晒太阳，看着外面的行人和汽车。")) is None
    )  # zh is kept
    assert language(sample(None, "Bonjour")) is None  # too short to judge: passes


def test_band_candidates_match_brute_force():
    rng = random.Random(0)
    bits, radius = 256, 18
    cfg = CurateConfig()
    cfg = dataclasses.replace(cfg, dedup=dataclasses.replace(cfg.dedup, phash_band_bits=16))
    plan = DedupPlan.from_config(cfg)
    codes = [rng.getrandbits(bits) for _ in range(1500)]
    for _ in range(300):
        base = rng.choice(codes[:1500])
        for b in rng.sample(range(bits), rng.randint(1, radius + 6)):
            base ^= 1 << b
        codes.append(base)
    # Adversarial (bands are read most significant bit first): 2 flips in each of bands 0-7 and
    # 1 in each of bands 8 and 9 is distance 18, and no band is equal: only the deletion keys
    # (rest of a band with one bit cleared) can find it. One more flip in band 9 must not match.
    worst = codes[0]
    for band in range(8):
        worst ^= 0b101 << (240 - 16 * band)
    worst ^= (1 << (240 - 16 * 8)) | (1 << (240 - 16 * 9))
    codes += [worst, worst ^ (1 << (242 - 16 * 9))]
    sigs = signature_table(
        [
            {"key": f"c{i}", "category": "caption", "phash": f"{c:064x}"}
            for i, c in enumerate(codes)
        ],
        0,
    )
    edges = kind_edges("image", route_rows(sigs, plan, "image"), plan)
    found = set(zip(edges.first.tolist(), edges.second.tolist()))
    truth = {
        (i, j)
        for i in range(len(codes))
        for j in range(i + 1, len(codes))
        if (codes[i] ^ codes[j]).bit_count() <= radius
    }
    assert found == truth  # every pair within the radius, nothing else
    assert (0, len(codes) - 2) in found and (0, len(codes) - 1) not in found
    # 19 exact-match bands of 16 bits do not fit in 256 bits; sub-radius 1 needs 10 bands.
    assert (plan.sub_radius, plan.bands, len(plan.slots())) == (1, 10, 20)


def test_near_dup_finds_resized_and_recompressed_real_photos(real_images):
    cfg = CurateConfig()
    size, radius = cfg.dedup.phash_size, cfg.dedup.phash_radius
    originals = {name: Image.open(path).convert("RGB") for name, path in real_images.items()}
    codes = {name: phash_code(image, size) for name, image in originals.items()}
    for name, image in originals.items():
        for scale, quality in ((0.5, 85), (0.33, 40), (0.25, 20), (0.7, 10)):
            small = image.resize(
                (max(32, int(image.width * scale)), max(32, int(image.height * scale))),
                Image.BILINEAR,
            )
            copy = Image.open(io.BytesIO(encode(small, "JPEG", quality=quality)))
            distance = (phash_code(copy, size) ^ codes[name]).bit_count()
            assert distance <= radius, (name, scale, quality, distance)
    names = sorted(codes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (codes[a] ^ codes[b]).bit_count() > radius, (a, b)
    # The look-alike pair that a 64-bit hash merges is kept apart by the 256-bit one.
    assert (codes["img_pair_1.jpg"] ^ codes["img_pair_2.jpg"]).bit_count() > 2 * radius


def test_global_dedup_orders_exact_image_and_text(real_images):
    cfg = CurateConfig()
    photo = real_images["img2.jpg"].read_bytes()
    decode = Decode(cfg.filters)
    texts = [
        "A city street with tall buildings and many people walking to work in the morning.",
        "A city street with tall buildings and many people walking to work in the morning.",
        "A city street with tall buildings and many people walking to work in the morning!",
        "An entirely different description about mountains lakes and quiet forests at dusk.",
    ]
    medias = [photo, photo, encode(noise_image(1, 96, 96)), encode(noise_image(2, 96, 96))]
    other = Image.open(io.BytesIO(photo)).resize((320, 240))
    medias.append(encode(other, "JPEG", quality=50))
    texts.append(
        "A totally unrelated caption so only the picture can match the earlier photo here."
    )
    sigs = []
    for i, (media, text) in enumerate(zip(medias, texts)):
        s = sample(media, text, key=f"s{i}")
        assert decode(s) is None
        sigs.append(signature(s, cfg))
    drops, _, _ = decide(signature_table(sigs, 0), DedupPlan.from_config(cfg))
    reasons = dict(zip(drops["key"], drops["reason"]))
    verdicts = [reasons.get(f"s{i}") for i in range(len(sigs))]
    assert verdicts == [
        None,
        "exact_duplicate",
        "near_duplicate_text",
        None,
        "near_duplicate_image",
    ]


def test_synthetic_samples_exempt_from_near_dup_but_not_exact():
    cfg = CurateConfig()
    s = sample(encode(noise_image(3, 64, 64)), metadata={"synthetic": True})
    Decode(cfg.filters)(s)
    sig = signature(s, cfg)
    assert sig["phash"] is None and sig["sha"]
    exempt_off = dataclasses.replace(
        cfg, dedup=dataclasses.replace(cfg.dedup, exempt_synthetic=False)
    )
    assert signature(s, exempt_off)["phash"] is not None


def test_mixture_factors_and_deterministic_repeats():
    cfg = MixtureConfig(weights={"caption": 0.5, "chart": 0.25, "video": 0.25}, max_repeat=3.0)
    available = {"caption": 1000, "chart": 100, "table": 400}
    assert target_shares(cfg.weights, available) == {"caption": 2 / 3, "chart": 1 / 3}
    factors, budget = repeat_factors(cfg, available)
    assert budget == 1100
    assert factors["caption"] == pytest.approx(1100 * 2 / 3 / 1000)
    assert factors["chart"] == 3.0  # capped: 1100/3/100 = 3.67
    assert factors["table"] == 0.0  # no weight: dropped
    keys = [f"k{i}" for i in range(4000)]
    draws = [repeats(0.3, 7, k) for k in keys]
    assert draws == [repeats(0.3, 7, k) for k in keys]
    assert abs(np.mean(draws) - 0.3) < 0.03
    assert {repeats(2.5, 7, k) for k in keys} == {2, 3}
    budgeted, _ = repeat_factors(dataclasses.replace(cfg, token_budget=550), available)
    assert budgeted["caption"] == pytest.approx(factors["caption"] / 2)


def _tiny_clip(tmp_path) -> Path:
    """A tiny random CLIP saved like a real one (no weights can be downloaded here)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    path = tmp_path / "tiny-clip"
    if path.exists():
        return path
    torch.manual_seed(0)
    words = [
        "[PAD]",
        "[UNK]",
        "a",
        "cat",
        "dog",
        "photo",
        "of",
        "the",
        "chart",
        "seen",
        "in",
        "small",
        "test",
        "picture",
    ]
    vocab = {w: i for i, w in enumerate(words)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", model_max_length=16
    )
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


def test_clip_scorer_loads_a_local_tiny_model(tmp_path):
    path = _tiny_clip(tmp_path)
    scorer = ClipScorer(str(path))
    images = [noise_image(i, 48, 40) for i in range(6)]
    texts = ["a photo of a cat", "a dog", "the chart", "a cat", "photo of the dog", "a chart"]
    scores = scorer.score(images, texts)
    assert len(scores) == 6 and all(-1.0 <= s <= 1.0 for s in scores)
    assert scores == ClipScorer(str(path)).score(images, texts)  # deterministic load + eval
    ranked = sorted(scores)
    threshold = (ranked[2] + ranked[3]) / 2
    op = ClipScore(FilterConfig(clip_model=str(path), min_clip_score=threshold), scorer=scorer)
    verdicts = []
    for image, text in zip(images, texts):
        s = sample(b"x", text)
        s.image = image
        verdicts.append(op(s))
        assert s.metadata["clip_score"] == pytest.approx(scores[len(verdicts) - 1], abs=1e-3)
    assert sum(v is not None and v.reason == "clip_score_low" for v in verdicts) == 3
    with pytest.raises(ValueError, match="clip_model"):
        ClipScore(FilterConfig())


def test_clip_score_operator_inside_the_stage(tmp_path):
    from curate_corpus import write_tar

    from keye_model.data.curate import curate

    path = _tiny_clip(tmp_path)
    scorer = ClipScorer(str(path))
    captions = [
        "a photo of a cat",
        "a dog",
        "the chart of a photo",
        "a cat",
        "photo of the dog",
        "a chart",
    ]
    captions = [c + " seen in a small test picture" for c in captions]
    images = [encode(noise_image(40 + i, 64, 48)) for i in range(6)]
    scores = [scorer.score([Image.open(io.BytesIO(m))], [c])[0] for m, c in zip(images, captions)]
    ranked = sorted(scores)
    write_tar(
        tmp_path / "in.tar",
        [(f"c{i}", "png", m, {"text": c}) for i, (m, c) in enumerate(zip(images, captions))],
    )
    cfg = CurateConfig(operators=["decode", "image_size", "clip_score"], shard_size=10)
    cfg = dataclasses.replace(
        cfg,
        filters=dataclasses.replace(
            cfg.filters, clip_model=str(path), min_clip_score=(ranked[2] + ranked[3]) / 2
        ),
        mixture=dataclasses.replace(cfg.mixture, enabled=False),
    )
    curate(cfg, [str(tmp_path / "in.tar")], str(tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"input": 6, "kept": 3, "rejected": 3, "emitted": 3}
    assert manifest["rejected_by_reason"] == {"clip_score_low": 3}
    with pytest.raises(ValueError, match="curate.filters.clip_model"):
        curate(CurateConfig(operators=["decode", "clip_score"]), [], str(tmp_path / "never"))
