"""Keye chat format (REFERENCE §1.5): ChatML with vision placeholders and thinking modes.

``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; a default system prompt when none is
given; ``<|im_start|>assistant\\n`` as generation prompt. Each image part becomes
``<|vision_start|><|image_pad|><|vision_end|>`` and each video part
``<|vision_start|><|video_pad|><|vision_end|>``; the processor later expands the single pad
into the exact per-image token count, and a video pad into per-frame ``<|frame|>``-prefixed runs.

Thinking modes are chosen by a suffix on the last user text, as in the released model card
("Describe this image./think"): ``think`` -> ``/think``, ``no_think`` -> ``/no_think``,
``auto`` -> nothing (the model decides). The same rules exist twice on purpose: as Python
(``apply_chat_template``) and as a Jinja ``CHAT_TEMPLATE`` for ``tokenizer.apply_chat_template``
and serving engines; a test renders both and requires identical strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from keye_model.processing.tokens import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    THINK_END,
    THINK_START,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
THINKING_SUFFIX = {"think": "/think", "no_think": "/no_think", "auto": ""}
IMAGE_PLACEHOLDER = f"{VISION_START}{IMAGE_PAD}{VISION_END}"
VIDEO_PLACEHOLDER = f"{VISION_START}{VIDEO_PAD}{VISION_END}"
ROLES = ("system", "user", "assistant", "tool")
_IMAGE_TYPES = ("image", "image_url")


def part_type(part: Mapping[str, Any]) -> str:
    """Kind of a content part: ``text``, ``image`` or ``video`` (OpenAI and keye-vl-utils styles)."""
    kind = part.get("type")
    if kind is None:
        kind = next((k for k in ("text", "image", "image_url", "video") if k in part), None)
    if kind in _IMAGE_TYPES:
        return "image"
    if kind in ("text", "video"):
        return kind
    raise ValueError(
        f"unknown content part type {kind!r} in {dict(part)!r}; expected text, image, image_url or video"
    )


def _render_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, Sequence):
        raise ValueError(
            f"{where}: content must be a string or a list of parts, got {type(content).__name__}"
        )
    pieces = []
    for part in content:
        kind = part_type(part)
        if kind == "text":
            pieces.append(str(part.get("text", "")))
        elif kind == "image":
            pieces.append(IMAGE_PLACEHOLDER)
        else:
            pieces.append(VIDEO_PLACEHOLDER)
    return "".join(pieces)


def _with_suffix(content: Any, suffix: str) -> Any:
    """Content with ``suffix`` appended to its last text (a text part is added when none exists)."""
    if not suffix:
        return content
    if isinstance(content, str) or content is None:
        return (content or "") + suffix
    parts = [dict(p) for p in content]
    for part in reversed(parts):
        if part_type(part) == "text":
            part["text"] = str(part.get("text", "")) + suffix
            return parts
    return [*parts, {"type": "text", "text": suffix}]


def apply_chat_template(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    thinking: str = "auto",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> str:
    """ChatML prompt text of ``messages`` with vision placeholders and the thinking-mode suffix."""
    if thinking not in THINKING_SUFFIX:
        raise ValueError(f"thinking must be one of {sorted(THINKING_SUFFIX)}, got {thinking!r}")
    if not messages:
        raise ValueError("messages is empty")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role must be one of {ROLES}, got {role!r}")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    out = []
    if messages[0]["role"] != "system" and system_prompt is not None:
        out.append(f"{IM_START}system\n{system_prompt}{IM_END}\n")
    for index, message in enumerate(messages):
        content = message.get("content")
        if index == last_user:
            content = _with_suffix(content, THINKING_SUFFIX[thinking])
        text = _render_content(content, f"messages[{index}]")
        out.append(f"{IM_START}{message['role']}\n{text}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def parse_thinking(text: str) -> tuple[str | None, str]:
    """Split a response into (reasoning inside ``<think>...</think>`` or None, final answer)."""
    if THINK_END in text:
        head, _, answer = text.partition(THINK_END)
        start = head.find(THINK_START)
        thinking = head[start + len(THINK_START) :] if start >= 0 else head
        return thinking.strip(), answer.strip()
    start = text.find(THINK_START)
    if start >= 0:
        # Unterminated reasoning (generation cut off): everything after <think> is reasoning.
        return text[start + len(THINK_START) :].strip(), text[:start].strip()
    return None, text.strip()


# Jinja twin of apply_chat_template (variables: messages, add_generation_prompt, thinking,
# system_prompt). Kept whitespace-tight with {%- -%}; newlines are written explicitly.
CHAT_TEMPLATE = (
    "{%- set mode = thinking if thinking is defined and thinking else 'auto' -%}"
    "{%- set suffix = '/think' if mode == 'think' else ('/no_think' if mode == 'no_think' else '') -%}"
    "{%- set sys = system_prompt if system_prompt is defined else '"
    + DEFAULT_SYSTEM_PROMPT
    + "' -%}"
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- if messages[0]['role'] != 'system' and sys is not none -%}"
    "{{- '<|im_start|>system\\n' + sys + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- set is_last_user = loop.index0 == ns.last_user -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['content'] is string -%}"
    "{{- m['content'] -}}{%- if is_last_user -%}{{- suffix -}}{%- endif -%}"
    "{%- elif m['content'] is none -%}"
    "{%- if is_last_user -%}{{- suffix -}}{%- endif -%}"
    "{%- else -%}"
    "{%- set parts = namespace(last_text=-1) -%}"
    "{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'text' or (p['type'] is not defined and p['text'] is defined) -%}"
    "{%- set parts.last_text = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for p in m['content'] -%}"
    "{%- set kind = p['type'] if p['type'] is defined else "
    "('text' if p['text'] is defined else ('video' if p['video'] is defined else 'image')) -%}"
    "{%- if kind == 'text' -%}{{- p['text'] -}}"
    "{%- if is_last_user and loop.index0 == parts.last_text -%}{{- suffix -}}{%- endif -%}"
    "{%- elif kind == 'image' or kind == 'image_url' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif kind == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- else -%}{{- raise_exception('unknown content part type ' + kind) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if is_last_user and parts.last_text == -1 -%}{{- suffix -}}{%- endif -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
