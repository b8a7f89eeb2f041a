"""Short labels for the app's pickers: a long name cut at a word boundary, with an ellipsis, rather
than mid-word by the browser or by a fixed slice.

1. A name that fits is shown whole.
2. Otherwise its last part (after the last ``-``, ``_``, ``.``, ``/`` or space) is kept when short and
   holding a digit: an automatic graph name ends with the hash that tells two graphs of one prompt apart.
3. The start is cut back to the last word boundary that leaves room for ``…`` and that tail; a first
   word longer than the room is cut inside (nothing else fits).
"""

from __future__ import annotations

import re

SEPARATORS = "-_./ "
_LAST_PART = re.compile(r"[-_./ ]([^-_./ ]+)$")


def clip_words(text: object, limit: int = 48) -> str:
    """``text`` in at most ``limit`` characters, cut at a word boundary with ``…`` (see the steps above)."""
    text = str(text)
    if len(text) <= limit:
        return text
    found = _LAST_PART.search(text)
    keep = found and len(found.group(0)) <= limit // 3 and any(ch.isdigit() for ch in found.group(1))
    tail = found.group(0) if keep else ""
    room = limit - len(tail) - 1  # 1 for the ellipsis
    head = text[:room + 1]  # one more: a separator right after the room is a boundary too
    cut = max(head.rfind(sep, 0, room + 1) for sep in SEPARATORS)
    head = head[:cut] if cut > 0 else head[:room]
    return head.rstrip(SEPARATORS) + "…" + tail


__all__ = ["clip_words"]
