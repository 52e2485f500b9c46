"""Curation inputs in the ecosystem's shapes: Data-Juicer JSONL, LLaVA JSON, Hugging Face Parquet.

The end-to-end test runs the real stage on small files of each kind built here from the real
photos, and checks that every record is either kept (with its images, in order, and its text) or
rejected with the expected reason. The unit tests pin the format detection and conversions.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate_corpus import FIXTURES, encode, noise_image, truncated_jpeg

from keye_model.data import readers
from keye_model.data.config import CurateConfig
from keye_model.data.formats import (
    DATA_JUICER,
    KEYE,
    LLAVA,
    llava_turns,
    place_media,
    record_format,
)
from keye_model.data.readers import BadRecord, iter_tar_groups, plan_units, read_unit
from keye_model.data.records import Sample
from keye_model.processing.chat import IMAGE_PLACEHOLDER as IMG
from keye_model.processing.chat import VIDEO_PLACEHOLDER as VID

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TURNS = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))


def photo(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def local_config() -> CurateConfig:
    """Every operator, mixture off (each kept sample emitted once), the single-process engine."""
    cfg = CurateConfig(shard_size=50, num_workers=1)
    cfg = dataclasses.replace(cfg, mixture=dataclasses.replace(cfg.mixture, enabled=False))
    if "engine" in {f.name for f in dataclasses.fields(cfg)}:  # once the Ray engine exists
        cfg = dataclasses.replace(cfg, engine="local")
    return cfg


@dataclasses.dataclass
class Want:
    """What the stage must make of one input record."""

    reason: str  # "kept" or the rejection reason
    media: list[bytes] = dataclasses.field(default_factory=list)
    text: str = ""
    qa: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    category: str = "caption"
    detail: str = ""  # a substring of the rejection detail


def data_juicer_file(root: Path) -> tuple[str, dict[str, Want]]:
    """A Data-Juicer JSONL: captions, an interleaved document, a video, and broken records."""
    (root / "images").mkdir(parents=True)
    (root / "videos").mkdir()
    for name in ("cat.jpg", "blip.jpg", "img2.jpg", "img9.jpg"):
        shutil.copy(FIXTURES / name, root / "images" / name)
    shutil.copy(FIXTURES / "video1.mp4", root / "videos" / "clip.mp4")
    (root / "images" / "cut.jpg").write_bytes(truncated_jpeg(photo("img8.jpg")))
    (root / "images" / "thin.png").write_bytes(encode(noise_image(7, 20, 300)))
    outside = root.parent / "elsewhere.jpg"  # an absolute path outside the folder
    outside.write_bytes(encode(noise_image(8, 96, 80), "JPEG", quality=90))
    cat, dog, bus = (
        "Two tabby cats sleep on a pink sofa next to the remote controls.",
        "A golden retriever gives its paw to a woman sitting on the beach.",
        "A white bus with a red advertisement drives down a busy street.",
    )
    eoc = "<|__dj__eoc|>"
    records: list[tuple[dict | str, Want]] = [
        (
            {"text": f"<__dj__image> {cat} {eoc}", "images": ["images/cat.jpg"]},
            Want("kept", [photo("cat.jpg")], f"{IMG} {cat}"),
        ),
        (
            {
                "text": f"<__dj__image> {dog} {eoc} <__dj__image> {bus} {eoc}",
                "images": ["images/blip.jpg", "images/img2.jpg"],
                "meta": {"src": "handmade"},
            },
            Want(
                "kept",
                [photo("blip.jpg"), photo("img2.jpg")],
                f"{IMG} {dog}\n{IMG} {bus}",
                category="interleaved",
            ),
        ),
        (  # no placeholder: the image goes in front, the text stays as it is
            {
                "text": "Three fluffy puppies huddle together in a white basket.",
                "images": ["images/img9.jpg"],
            },
            Want(
                "kept",
                [photo("img9.jpg")],
                "Three fluffy puppies huddle together in a white basket.",
            ),
        ),
        (
            {
                "text": f"<__dj__video> A short outdoor clip with people moving about. {eoc}",
                "videos": ["videos/clip.mp4"],
                "category": "video",
            },
            Want(
                "kept",
                [photo("video1.mp4")],
                f"{VID} A short outdoor clip with people moving about.",
                category="video",
            ),
        ),
        (
            {
                "text": "<__dj__image> A square of coloured noise seen from far away.",
                "images": [str(outside)],
            },
            Want(
                "kept",
                [outside.read_bytes()],
                f"{IMG} A square of coloured noise seen from far away.",
            ),
        ),
        (
            {
                "text": f"<__dj__image> {cat} and more",
                "images": ["images/cat.jpg", "images/img9.jpg"],
            },
            Want("bad_record", detail="1 <__dj__image> placeholders for 2 image paths"),
        ),
        (
            {
                "text": "<__dj__image> A photo that was never copied here.",
                "images": ["images/gone.jpg"],
            },
            Want("media_missing", detail="gone.jpg"),
        ),
        (
            {
                "text": f"<__dj__image> {dog} {eoc} <__dj__image> A damaged second picture of a group.",
                "images": ["images/blip.jpg", "images/cut.jpg"],
            },
            Want("truncated_image", detail="image 2 of 2 (jpg)"),
        ),
        (
            {
                "text": f"<__dj__image> {bus} {eoc} <__dj__image> A thin strip of noise.",
                "images": ["images/img2.jpg", "images/thin.png"],
            },
            Want("too_small", detail="image 2 of 2: 20x300"),
        ),
        (
            {
                "text": "A narrated recording of waves on a beach.",
                "audios": ["waves.wav"],
                "images": [],
            },
            Want("bad_record", detail="'audios' are not curated"),
        ),
        ('{"text": "<__dj__image> cut off', Want("bad_record", detail="line 11")),
    ]
    path = root / "dj.jsonl"
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r, _ in records)
    )
    return str(path), {f"line{i + 1:08d}": want for i, (_, want) in enumerate(records)}


def llava_file(root: Path) -> tuple[str, dict[str, Want]]:
    """A LLaVA instruction file (one JSON array) with single- and multi-image conversations."""
    (root / "coco").mkdir(parents=True)
    for name in ("img3.jpg", "img_pair_1.jpg", "img_pair_2.jpg", "img10.jpg", "img1.png"):
        shutil.copy(FIXTURES / name, root / "coco" / name)

    def turns(*values: str, system: str = "") -> list[dict]:
        out = [{"from": "system", "value": system}] if system else []
        roles = ("human", "gpt")
        return out + [{"from": roles[i % 2], "value": v} for i, v in enumerate(values)]

    q1, a1 = (
        "What is the woman holding?",
        "She holds a black umbrella while she walks down the alley.",
    )
    q2, a2 = "Is the photo in colour?", "No, it is a black and white photograph of a wet street."
    q3 = "What differs between the two pictures?"
    a3 = "The first shows an airplane among clouds, the second a ship on a sea of clouds."
    q4, a4 = "What are the two toys wearing?", "Both toys wear blue headlamps on their heads."
    q5, a5 = "Describe the bed in this bedroom.", "A bed with white sheets and a blue foam topper."
    records: list[tuple[dict, Want]] = [
        (
            {
                "id": "coco-1",
                "image": "coco/img3.jpg",
                "conversations": turns(f"<image>\n{q1}", a1, q2, a2),
            },
            Want("kept", [photo("img3.jpg")], qa=[(f"{IMG}\n{q1}", a1), (q2, a2)]),
        ),
        (
            {
                "id": "pair",
                "image": ["coco/img_pair_1.jpg", "coco/img_pair_2.jpg"],
                "conversations": turns(f"<image> <image> {q3}", a3),
            },
            Want(
                "kept",
                [photo("img_pair_1.jpg"), photo("img_pair_2.jpg")],
                qa=[(f"{IMG} {IMG} {q3}", a3)],
                category="interleaved",
            ),
        ),
        (
            {
                "id": "toys",
                "image": "coco/img10.jpg",
                "conversations": turns(f"{q4}\n<image>", a4, system="Answer briefly."),
            },
            Want("kept", [photo("img10.jpg")], qa=[(f"{q4}\n{IMG}", a4)]),
        ),
        (  # no <image> token: LLaVA puts the image first, so do we
            {"id": 42, "image": "coco/img1.png", "conversations": turns(q5, a5)},
            Want("kept", [photo("img1.png")], qa=[(q5, a5)]),
        ),
        (
            {
                "id": "text-only",
                "conversations": turns(
                    "What is the capital of France?", "Paris is the capital of France."
                ),
            },
            Want("no_media"),
        ),
        (
            {
                "id": "answer-first",
                "image": "coco/img3.jpg",
                "conversations": [{"from": "gpt", "value": a1}],
            },
            Want("bad_record", detail="conversations[0]: an answer with no question"),
        ),
        (
            {
                "id": "lost",
                "image": "coco/missing.jpg",
                "conversations": turns(f"<image>\n{q1}", a1),
            },
            Want("media_missing", detail="missing.jpg"),
        ),
    ]
    path = root / "llava.json"
    path.write_text(json.dumps([r for r, _ in records], indent=1, ensure_ascii=False))
    keys = [str(r["id"]) for r, _ in records]
    return str(path), dict(zip(keys, (w for _, w in records)))


def hf_parquet_files(root: Path) -> tuple[list[str], dict[str, dict[str, Want]]]:
    """Parquet as ``datasets`` writes it: image structs under any column name, LLaVA rows."""
    (root / "files").mkdir(parents=True)
    shutil.copy(FIXTURES / "deepseek_benchmark_chart.png", root / "files" / "chart.png")
    post, shot, logo = (
        photo("keye_post1.jpeg"),
        photo("kfp_ui_screenshot.png"),
        photo("sglang_logo.png"),
    )
    chart = photo("deepseek_benchmark_chart.png")
    captions = [
        (
            "post",
            {"bytes": post, "path": "post1.jpeg"},
            "A wide banner announcing a new vision language model.",
            Want("kept", [post]),
        ),
        (
            "chart",
            {"bytes": None, "path": "files/chart.png"},
            "A bar chart comparing benchmark scores of several models.",
            Want("kept", [chart]),
        ),
        (
            "nothing",
            {"bytes": None, "path": None},
            "A row whose picture was lost before it was saved.",
            Want("no_media"),
        ),
        (
            "garbled",
            {"bytes": b"<html>not a picture</html>", "path": "x.png"},
            "A picture that is really a web page in disguise.",
            Want("not_an_image"),
        ),
    ]
    for _, _, text, want in captions:
        want.text = text
    table = pa.table(
        {
            "id": [c[0] for c in captions],
            "picture": pa.array([c[1] for c in captions], IMAGE_STRUCT),  # found by type
            "caption": [c[2] for c in captions],
        }
    )
    first = root / "captions.parquet"
    pq.write_table(table, first)

    question = "Which picture shows a user interface and which a logo?"
    answer = "The first is a pipeline dashboard screenshot; the second is a colourful logo."
    rows = [
        (
            "ui-logo",
            [{"bytes": shot, "path": "a.png"}, {"bytes": logo, "path": "b.png"}],
            [
                {"from": "human", "value": f"<image>\n<image>\n{question}"},
                {"from": "gpt", "value": answer},
            ],
            Want(
                "kept",
                [shot, logo],
                qa=[(f"{IMG}\n{IMG}\n{question}", answer)],
                category="interleaved",
            ),
        ),
        (
            "one-token",
            [{"bytes": shot, "path": "a.png"}, {"bytes": logo, "path": "b.png"}],
            [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
            Want("bad_record", detail="1 <image> placeholders for 2 image paths"),
        ),
    ]
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "images": pa.array([r[1] for r in rows], pa.list_(IMAGE_STRUCT)),
            "conversations": pa.array([r[2] for r in rows], TURNS),
        }
    )
    second = root / "llava.parquet"
    pq.write_table(table, second)
    return [str(first), str(second)], {
        "captions": {c[0]: c[3] for c in captions},
        "llava": {r[0]: r[3] for r in rows},
    }


def read_shards(output: Path) -> dict[str, Sample]:
    kept = {}
    for shard in sorted((output / "shards").glob("*.tar")):
        for key, members in iter_tar_groups(shard):
            kept[key] = Sample.from_members(key, members)
    return kept


def test_data_juicer_llava_and_parquet_inputs_curate_with_every_record_accounted(tmp_path):
    from keye_model.data.curate import curate

    dj, dj_want = data_juicer_file(tmp_path / "dj")
    llava, llava_want = llava_file(tmp_path / "llava")
    parquets, hf_want = hf_parquet_files(tmp_path / "hf")
    inputs = [dj, llava, *parquets]
    assert [u.kind for u in plan_units(local_config(), inputs)] == [
        DATA_JUICER,
        LLAVA,
        "parquet",
        "parquet",
    ]
    want = {}
    for unit, records in enumerate((dj_want, llava_want, hf_want["captions"], hf_want["llava"])):
        want.update({f"{unit:05d}/{key}": w for key, w in records.items()})

    output = tmp_path / "out"
    curate(local_config(), inputs, str(output))
    manifest = json.loads((output / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["input"] == len(want) == counts["kept"] + counts["rejected"]
    sizes = [len(dj_want), len(llava_want), len(hf_want["captions"]), len(hf_want["llava"])]
    for source, size in zip(inputs, sizes):
        per = manifest["by_source"][source]
        assert per["input"] == size == per["kept"] + per["rejected"], source

    rejected = {}
    for path in sorted((output / "rejected").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            rejected[record["key"]] = record
    kept = read_shards(output)
    assert sorted(kept) == sorted(k for k, w in want.items() if w.reason == "kept")
    assert sorted(rejected) == sorted(k for k, w in want.items() if w.reason != "kept")
    for key, record in rejected.items():
        assert (record["reason"], want[key].reason) == (want[key].reason, record["reason"]), key
        assert want[key].detail in record["detail"], (key, record["detail"])
    for key, sample in kept.items():
        w = want[key]
        assert [item.data for item in sample.media_items()] == w.media, key
        assert sample.text == w.text, key
        assert [(t.question, t.answer) for t in sample.qa] == w.qa, key
        assert sample.category == w.category, key
        assert sample.image_tokens > 0 and sample.text_tokens > 0, key
    assert kept["00000/line00000002"].metadata == {"src": "handmade"}
    assert kept["00001/toys"].metadata == {"system": "Answer briefly."}
    assert kept["00000/line00000002"].full_text() == (
        "A golden retriever gives its paw to a woman sitting on the beach.\n"
        "A white bus with a red advertisement drives down a busy street."
    )
    # The shards stay plain WebDataset: the library itself reads the second image as "1.jpg".
    import webdataset as wds

    urls = [str(p) for p in sorted((output / "shards").glob("*.tar"))]
    by_key = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    doc = by_key["00000/line00000002"]
    assert doc["jpg"] == photo("blip.jpg") and doc["1.jpg"] == photo("img2.jpg")
    assert doc["txt"].decode().startswith("A golden retriever")


@pytest.mark.parametrize(
    "record,fmt",
    [
        ({"text": "<__dj__image> x", "images": ["a.jpg"]}, DATA_JUICER),
        ({"text": "<__dj__video> x", "videos": ["a.mp4"]}, DATA_JUICER),
        ({"image": "a.jpg", "conversations": []}, LLAVA),
        ({"image": "a.jpg", "text": "x"}, KEYE),
        ({"video": "a.mp4"}, KEYE),
        ({"text": "no media"}, None),
        (["a list"], None),
    ],
)
def test_record_format_from_the_fields(record, fmt):
    assert record_format(record) == fmt


def test_placeholders_map_to_media_in_text_order():
    texts, refs = place_media(
        ["<__dj__video> clip <__dj__image> one", "<__dj__image> two"],
        {"image": "<__dj__image>", "video": "<__dj__video>"},
        {"image": ["1.jpg", "2.jpg"], "video": ["v.mp4"]},
    )
    assert refs == ["v.mp4", "1.jpg", "2.jpg"]
    assert texts == [f"{VID} clip {IMG} one", f"{IMG} two"]
    with pytest.raises(ValueError, match="0 <__dj__video> placeholders for 1 video paths"):
        place_media(
            ["<__dj__image> x"],
            {"image": "<__dj__image>", "video": "<__dj__video>"},
            {"image": ["1.jpg"], "video": ["v.mp4"]},
        )


@pytest.mark.parametrize(
    "turns,message",
    [
        ("hello", "must be a list"),
        ([{"from": "human", "value": 3}], r"conversations\[0\] needs 'from' and a string 'value'"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "a second question"),
        ([{"from": "human", "value": "a"}], "unanswered question"),
        ([{"from": "bot", "value": "a"}], r"conversations\[0\].from is 'bot'"),
        ([{"from": "system", "value": "be brief"}], "no question/answer pair"),
    ],
)
def test_llava_conversation_errors_name_the_turn(turns, message):
    with pytest.raises(ValueError, match=message):
        llava_turns(turns)


def test_llava_jsonl_and_user_assistant_roles(tmp_path):
    shutil.copy(FIXTURES / "cat.jpg", tmp_path / "cat.jpg")
    lines = [
        {
            "id": "a",
            "image": "cat.jpg",
            "conversations": [
                {"from": "user", "value": "<image>\nHow many cats are there?"},
                {"from": "assistant", "value": "There are two cats."},
            ],
        },
        {"id": "b", "text": "<__dj__image> a Data-Juicer record", "images": ["cat.jpg"]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    cfg = CurateConfig()
    (unit,) = plan_units(cfg, [str(path)])
    first, second = read_unit(unit, cfg, tmp_path)
    assert unit.kind == LLAVA and first.qa[0].answer == "There are two cats."
    assert first.media == photo("cat.jpg")
    assert (
        isinstance(second, BadRecord)
        and "data_juicer record in a llava file" in second.rejection.detail
    )


def test_json_array_streams_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "JSON_CHUNK", 5)  # every element straddles several reads
    records = [
        {"image": "a.jpg", "text": "ünïcödé ✓ 猫", "n": 12345678901234567890},
        [1, 2.5e-3, None],
        "a string with , and ] inside",
        123456789,
        {"nested": {"deep": [{"x": "}"}]}},
    ]
    text = " \n[ " + " ,\n".join(json.dumps(r, ensure_ascii=False) for r in records) + " ]\n"
    got = list(readers.iter_json_array(io.StringIO(text)))
    assert [value for _, value, _ in got] == records
    assert [json.loads(raw) for _, _, raw in got] == records
    assert list(readers.iter_json_array(io.StringIO("[ ]"))) == []
    with pytest.raises(ValueError, match="expected ',' or ']' after record 0"):
        list(readers.iter_json_array(io.StringIO('[{"a": 1} {"b": 2}]')))


def test_damaged_json_array_keeps_what_came_before(tmp_path):
    shutil.copy(FIXTURES / "cat.jpg", tmp_path / "cat.jpg")
    good = json.dumps(
        {
            "id": "ok",
            "image": "cat.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat animal is this?"},
                {"from": "gpt", "value": "A cat."},
            ],
        }
    )
    path = tmp_path / "cut.json"
    path.write_text(f'[{good}, {good.replace("ok", "second")}, {{"id": "third", "image": ')
    cfg = CurateConfig()
    (unit,) = plan_units(cfg, [str(path)])
    items = list(read_unit(unit, cfg, tmp_path))
    assert [i.key for i in items] == ["00000/ok", "00000/second", "00000/_damaged_tail"]
    assert "JSON array unreadable after record 1" in items[2].rejection.detail


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("x.json", '{"image": "a.jpg"}', r"x.json: not a JSON array of records"),
        ("e.json", "[]", r"e.json: an empty JSON array"),
        (
            "u.jsonl",
            '{"caption": "a", "url": "http://x"}',
            r"u.jsonl: records need media.*LLaVA.*\['caption', 'url'\]",
        ),
        ("n.json", "[3, 4]", r"n.json: records need media.*got int"),
    ],
)
def test_unreadable_json_inputs_fail_fast_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        plan_units(CurateConfig(), [str(path)])


def test_webdataset_sample_with_several_images(tmp_path):
    cat, dog = photo("cat.jpg"), photo("img9.jpg")
    path = tmp_path / "multi.tar"
    with tarfile.open(path, "w") as archive:
        for name, data in (
            ("doc.1.jpg", dog),  # order comes from the index, not from the archive
            ("doc.jpg", cat),
            ("doc.json", json.dumps({"text": f"{IMG} Cats. {IMG} Puppies."}).encode()),
            ("two.jpg", cat),
            ("two.png", encode(noise_image(1, 40, 40))),
            ("two.txt", b"Which one is the picture?"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    cfg = CurateConfig()
    (unit,) = plan_units(cfg, [str(path)])
    doc, two = read_unit(unit, cfg, tmp_path)
    assert [i.data for i in doc.media_items()] == [cat, dog] and doc.category == "interleaved"
    assert isinstance(two, BadRecord) and "ambiguous" in two.rejection.detail


def test_parquet_without_any_image_column_is_refused(tmp_path):
    path = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"caption": ["a"], "meta": pa.array([{"path": "x"}])}), path)
    with pytest.raises(ValueError, match=r"nocol.parquet has no image column.*\{bytes, path\}"):
        plan_units(CurateConfig(), [str(path)])


def test_parquet_image_cells_may_be_paths(tmp_path):
    shutil.copy(FIXTURES / "cat.jpg", tmp_path / "cat.jpg")
    path = tmp_path / "paths.parquet"
    table = {"image": ["cat.jpg", "gone.jpg", None], "text": ["Two cats.", "Gone.", "None."]}
    pq.write_table(pa.table(table), path)
    cfg = CurateConfig()
    (unit,) = plan_units(cfg, [str(path)])
    cat, gone, none = read_unit(unit, cfg, tmp_path)
    assert cat.media == photo("cat.jpg") and cat.text == "Two cats."
    assert gone.rejection.reason == "media_missing" and "gone.jpg" in gone.rejection.detail
    assert none.media is None  # the decode operator rejects it as no_media
