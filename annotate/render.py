"""Showing untrusted text (prompts, model output) so that nothing in it runs or loads.

Model output may carry `<script>`, raw HTML, markdown images pointing anywhere, or links. None of it is parsed:
prose goes through `st.text` (no Markdown, no HTML), fenced code blocks through `st.code`, both inside a
fixed-height scrolling box. `unsafe_allow_html` is never used in this app.
"""

from __future__ import annotations

import re

import streamlit as st

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.S | re.M)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_REF_IMAGE = re.compile(r"!\[([^\]]*)\]\[[^\]]*\]")
_ROLES = {"user": ("user", None), "assistant": ("assistant", None), "system": ("system", ":material/settings:")}


def segments(text: str) -> list[tuple[str, str, str]]:
    """Split text into ("text", "", body) and ("code", language, body) parts; an unclosed fence stays text."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    for m in _FENCE.finditer(text):
        if m.start() > pos:
            out.append(("text", "", text[pos:m.start()]))
        out.append(("code", m.group("lang").lower(), m.group("body").rstrip("\n")))
        pos = m.end()
    if pos < len(text):
        out.append(("text", "", text[pos:]))
    return [(k, lang, body) for k, lang, body in out if body.strip() or k == "code"]


def show_untrusted(text: str) -> None:
    """Render untrusted text as plain text and code blocks, never as Markdown or HTML."""
    parts = segments(text) or [("text", "", "(empty)")]
    for kind, lang, body in parts:
        if kind == "code":
            st.code(body, language=lang or None, wrap_lines=True)
        else:
            st.text(body.strip("\n"))


def safe_markdown(text: str) -> str:
    """Markdown with nothing that loads by itself: images become their alt text. Raw HTML never runs (Streamlit
    shows it as text without `unsafe_allow_html`, which this app never sets); links load only when clicked."""
    text = _IMAGE.sub(lambda m: f"[image: {m.group(1) or 'no description'}]", text)
    text = _REF_IMAGE.sub(lambda m: f"[image: {m.group(1) or 'no description'}]", text)
    # Any other image syntax (shortcut references `![x]` + `[x]: url`, nested brackets in the alt text, ...):
    # an escaped bracket after `!` can never open an image.
    return text.replace("![", "!\\[")


def show_response(text: str, height: int = 320) -> None:
    """A candidate response in a scrolling box."""
    with st.container(height=height, border=True):
        show_untrusted(text)


def show_conversation(messages: list[dict[str, str]]) -> None:
    """The prompt as chat turns; the role decides only the avatar, the content is untrusted text."""
    for m in messages:
        name, avatar = _ROLES.get(str(m.get("role", "user")), ("user", None))
        with st.chat_message(name, avatar=avatar):
            content = str(m.get("content", ""))
            if len(content) > 1500:
                with st.container(height=260, border=False):
                    show_untrusted(content)
            else:
                show_untrusted(content)
