"""Text from a run or an agent, as it may be shown to a person.

train.py prints what it likes, an exception's message is its own, and an agent writes train.py's bytes: any of it
can hold characters a terminal acts on rather than shows (ESC's sequences move the cursor, erase a line, set the
clipboard) or that reorder what an editor shows (bidi overrides). Shown as they are, they could draw a KEEP over a
crash's line, or show a reviewer a diff other than the one that ran (red team). So every such character is spelled
out as Python writes it (`\\x1b`, `\\u202e`) wherever the loop shows such text: verdict lines, `status`, `show`,
`diff` and report.md. The ledger keeps the text as it was.
"""

from __future__ import annotations

_KEPT = "\n\t"  # a line break and a tab are shown as what they are


def visible(text: str) -> str:
    """`text` with each character that is not printable (but a line break or a tab) spelled out: `\\x1b`."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in _KEPT else ascii(ch)[1:-1] for ch in text)


def visible_line(text: str) -> str:
    """`text` on one line (its whitespace, line breaks included, collapsed to single spaces), made visible."""
    return visible(" ".join(text.split()))
