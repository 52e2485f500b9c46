"""Tokenizers: load a real model's tokenizer, or build the tiny byte-level BPE offline.

The tiny tokenizer is trained with HF ``tokenizers`` on a small built-in corpus (English, digits,
arithmetic, some Chinese). It is byte-level, so any text - Chinese included - round-trips even
where the corpus had no merges for it. Every special token of ``tokens.SPECIAL_TOKENS`` sits at
ids 0..12 in that order (the tiny model config relies on it). Training is deterministic and
cached per process, so every build gives the same vocabulary.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from keye_model.processing.chat import CHAT_TEMPLATE
from keye_model.processing.tokens import IM_END, PAD, SPECIAL_TOKENS, THINK_END, THINK_START

DEFAULT_TINY_VOCAB = 2048
NON_SPECIAL = (THINK_START, THINK_END)

_ENGLISH = """\
You are a helpful assistant. Describe this image in detail. What is shown in the picture?
The cat is sitting on the table next to a cup of coffee. A dog runs across the green field.
Please answer the question with a single letter. The answer is A. The correct option is B.
Look at the chart and tell me which model has the highest score on the benchmark.
The video shows a person walking down the street, then a car drives past the camera.
Read the text in the screenshot and summarise the main points in two sentences.
There are three apples and two oranges in the basket, so there are five fruits in total.
The photo was taken at night; the city lights reflect on the river under the bridge.
Explain step by step how you reached the answer, then give the final result.
Let me think about this carefully. First, count the objects. Second, compare their sizes.
The table lists the population, area and capital city of each country in the region.
This bar chart compares accuracy across tasks: reasoning, math, OCR, charts and video.
A man in a blue shirt is holding a red umbrella while waiting for the bus.
The logo contains the word written in bold letters with a gradient background.
How many people are in the image? There are four people standing near the door.
Which of the following statements is true? Option C is correct because the angle is larger.
The train leaves the station at nine o'clock and arrives two hours later.
Translate the sentence into Chinese and explain the grammar of the original.
The model generates a response token by token until it reaches the end of the turn.
Kubernetes runs the training job on many nodes, and the pipeline tracks every experiment.
"""

_MATH = """\
Solve for x: 2x + 3 = 11, so x = 4. Compute 12 * 7 = 84 and 144 / 12 = 12.
The area of a circle is pi * r^2; with r = 3 the area is about 28.27.
If f(x) = x^2 - 5x + 6, then f(x) = (x - 2)(x - 3) and the roots are 2 and 3.
The sum 1 + 2 + ... + 100 = 5050. The probability is 3/8 = 0.375.
\\frac{a}{b} + \\frac{c}{d} = \\frac{ad + bc}{bd}. The final answer is \\boxed{42}.
sin^2(t) + cos^2(t) = 1; the derivative of e^x is e^x; the integral of 1/x is ln|x| + C.
Triangle ABC has sides 3, 4 and 5, so it is a right triangle with hypotenuse 5.
"""

_CHINESE = """\
你是一个有用的助手。请详细描述这张图片。图中有一只猫坐在桌子上。
这段视频展示了一个人在街上行走，然后一辆汽车从镜头前驶过。
请用一个字母回答问题。正确答案是A。让我们一步一步地思考这个问题。
这张图表比较了不同模型在推理、数学、文字识别和视频任务上的准确率。
"""


def _corpus() -> list[str]:
    """Deterministic training lines: fixed prose plus generated numbers and arithmetic."""
    lines = [*_ENGLISH.splitlines(), *_MATH.splitlines(), *_CHINESE.splitlines()]
    lines += [" ".join(str(n) for n in range(start, start + 20)) for start in range(0, 1000, 20)]
    lines += [
        f"{a} + {b} = {a + b}, {a} * {b} = {a * b}, {a} - {b} = {a - b}"
        for a in range(2, 40, 3)
        for b in (3, 7, 11)
    ]
    lines += [f"{t / 2:.1f} seconds" for t in range(0, 120)]
    return [line for line in lines if line.strip()]


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    data = json.loads(tokenizer.to_str())
    # <think>/</think> stay whole tokens at their fixed ids but are not "special": decoding with
    # skip_special_tokens=True must keep them so reasoning can still be split from the answer.
    for added in data["added_tokens"]:
        if added["content"] in NON_SPECIAL:
            added["special"] = False
    return json.dumps(data, ensure_ascii=False)


def build_tiny_tokenizer(vocab_size: int = DEFAULT_TINY_VOCAB) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with Keye's special tokens at ids 0..12."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be >= {minimum} (special tokens + 256 bytes), got {vocab_size}"
        )
    raw = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    for index, token in enumerate(SPECIAL_TOKENS):
        if raw.token_to_id(token) != index:
            raise RuntimeError(
                f"special token {token!r} landed at id {raw.token_to_id(token)}, expected {index}"
            )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token=PAD,
        eos_token=IM_END,
        padding_side="left",
        model_max_length=1 << 20,
    )
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                t for t in SPECIAL_TOKENS if t not in (PAD, IM_END, *NON_SPECIAL)
            ]
        }
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: str | Path) -> Any:
    """A real model's tokenizer from a local model directory (sets the Keye chat template if absent)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
