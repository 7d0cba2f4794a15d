"""Splitting a document into overlapping chunks of about ``size`` characters.

Characters rather than tokens: no tokenizer to load, and for embedding models a character budget
is a safe stand-in (about four characters a token in English). Each chunk ends at the best
boundary in the second half of its window: a paragraph break, else the end of a sentence, else a
line break, else a space; only a run with no whitespace at all is cut mid-word. The next chunk
starts ``overlap`` characters before that end, moved forward to the start of a word, so a passage
cut at a boundary still appears whole in one of the two chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Chunk", "split_text"]

_BOUNDARIES = (re.compile(r"\n\s*\n"), re.compile(r"[.!?;:][\"')\]]*\s"), re.compile(r"\n"), re.compile(r"\s"))


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    """Offset of the chunk's first character in the document."""
    end: int


def _cut(text: str, start: int, limit: int) -> int:
    """Where a chunk starting at ``start`` ends, at most at ``limit`` (exclusive)."""
    if limit >= len(text):
        return len(text)
    floor = start + (limit - start) // 2
    window = text[floor:limit]
    for pattern in _BOUNDARIES:
        ends = [match.end() for match in pattern.finditer(window)]
        if ends:
            return floor + ends[-1]
    return limit


def split_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """The chunks of ``text`` (``0 <= overlap < size``); whitespace-only chunks are dropped."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("need size >= 1 and 0 <= overlap < size")
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        end = _cut(text, start, start + size)
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            chunks.append(Chunk(stripped, start + lead, start + lead + len(stripped)))
        if end >= len(text):
            break
        following = max(end - overlap, start + 1)
        # Start the next chunk at a word, never before this one's start.
        if following < end and not text[following - 1].isspace():
            space = re.compile(r"\s").search(text, following, end)
            following = space.end() if space else end
        start = following
    return chunks
