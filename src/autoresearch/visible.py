"""Text from a run or an agent, as it may be shown to a person.

train.py prints what it likes, an exception's message is its own, and an agent writes train.py's bytes: any of it
can hold characters a terminal acts on rather than shows (ESC's sequences move the cursor, erase a line, set the
clipboard) or that reorder what an editor shows (bidi controls). Shown as they are, they could draw a KEEP over a
crash's line, or show a reviewer a diff other than the one that ran (red team). So each such character is spelled out
as Python writes it (`\\x1b`, `\\u202e`) wherever the loop shows such text: verdict lines, `status`, `show`, `diff`,
the live view and report.md. Every other character stays as it is (Chinese text's ideographic space, the joiner
inside an emoji). The ledger keeps the text as it was.
"""

from __future__ import annotations

import re

# The C0 and C1 controls but a tab and a line break, DEL, the bidi controls, and the line and paragraph separators.
_ACTED_ON = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with each character a terminal or an editor acts on rather than shows spelled out: `\\x1b`."""
    return _ACTED_ON.sub(lambda found: ascii(found[0])[1:-1], text)


def visible_line(text: str) -> str:
    """`text` on one line (its whitespace, line breaks included, collapsed to single spaces), made visible."""
    return visible(" ".join(text.split()))
