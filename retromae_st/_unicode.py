"""Character classes from the running Python's Unicode database, compiled into regular expressions once
per process (one scan of the code points, about 0.2 CPU s), so that text cleaning and packing test a line
in C instead of looping over its characters in Python."""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NamedTuple

# Planes 4-13 hold no assigned character (Unicode 16), so no invisible one: they are not scanned.
_SCANNED = (range(0x0, 0x40000), range(0xE0000, 0x110000))
_SUPPLEMENTARY = 0x10000


class _Classes(NamedTuple):
    invisible: list[int]
    unsafe_first: list[int]
    unsafe_last: list[int]


@functools.cache
def _classes() -> _Classes:
    classes = _Classes([], [], [])
    for scanned in _SCANNED:
        for point in scanned:
            char = chr(point)
            category = unicodedata.category(char)
            if (category == "Cc" and char not in "\t\n\r") or category == "Cf":
                classes.invisible.append(point)
            if point >= _SUPPLEMENTARY or char.isspace():  # words hold no whitespace
                continue
            decomposed = unicodedata.normalize("NFKD", char) if unicodedata.decomposition(char) else char
            if category[0] == "M" or category == "Cn" or decomposed[0].isspace():
                classes.unsafe_first.append(point)
            if category == "Cn" or decomposed[-1].isspace():
                classes.unsafe_last.append(point)
    return classes


def _character_class(points: list[int], extra: tuple[int, int] | None = None) -> str:
    ranges: list[tuple[int, int]] = []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1] = (ranges[-1][0], point)
        else:
            ranges.append((point, point))
    if extra is not None:
        ranges.append(extra)
    return "[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges) + "]"


@functools.cache
def invisible_characters() -> re.Pattern[str]:
    """Control characters other than tab, newline and carriage return, and format characters (zero-width
    spaces and joiners, byte-order marks, bidirectional overrides and isolates): what BERT's text cleaning
    deletes."""
    return re.compile(_character_class(_classes().invisible))


@functools.cache
def unsafe_word_edges() -> re.Pattern[str]:
    """Matches, in a text of words separated by single spaces, a word that starts with a combining mark,
    an unassigned code point or a character whose compatibility decomposition starts with a space (e.g.
    U+00B4 ACUTE ACCENT), or that ends with an unassigned code point or a character whose decomposition
    ends with one: the edges where a normaliser could join a word to the space beside it. Every character
    outside the Basic Multilingual Plane counts as such an edge (a small class of BMP ranges is what keeps
    the search fast)."""
    supplementary = (_SUPPLEMENTARY, 0x10FFFF)
    first = _character_class(_classes().unsafe_first, supplementary)
    last = _character_class(_classes().unsafe_last, supplementary)
    return re.compile(f"(?<![^ ]){first}|{last}(?![^ ])")
