"""The one sanitiser for text from an input on its way to a terminal (docs/robustness.md, "Text from input").

Names in traces, parameter names, file names and error messages quoting them are data: they must
not move the cursor, set the window title, clear the screen, start a fake line (a forged
`ERROR` finding) or reorder what is shown (bidi overrides, "Trojan Source"). Every such
character is shown as a visible escape (`\\x1b`, `\\n`, `\\u202e`) instead.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls (newline and tab included), DEL and C1 controls (NEL, CSI); the bidi embeddings,
# overrides, isolates and marks; zero-width and invisible format characters; line and paragraph
# separators; the byte-order mark.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_text(text: Any) -> str:
    """`text` as one line that is safe to print: every control or invisible formatting character
    shown as an escape."""
    return _UNSAFE.sub(_visible, str(text))
