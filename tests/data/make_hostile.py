"""Regenerates the hostile corpora: ``python tests/data/make_hostile.py``."""

from pathlib import Path

HERE = Path(__file__).parent
NORMAL = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Dense retrieval encodes queries and passages into a shared vector space.",
    "A masked auto-encoder rebuilds the input from its sentence embedding.",
    "Paris is the capital and most populous city of France.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The library opens at nine in the morning and closes at six.",
]
HOSTILE = [
    "",
    "   ",
    "\t \t",
    "\x00\x01\x02\x07\x1b",  # control characters only
    "control\x00characters\x1bin\x07the middle of a sentence",
    "\u200b\u200c\u200d\ufeff",  # zero-width only
    "zero\u200bwidth\u200cjoiners\u200dinside words",
    "\u202eright-to-left override text\u202c and \u2067isolates\u2069",
    "مرحبا بالعالم هذا نص عربي من اليمين إلى اليسار",
    "שלום עולם זה טקסט בעברית",
    "😀😃😄 🚀🔥 👩‍👩‍👧‍👦 emoji everywhere 🎉",
    "🙂" * 500,
    "[MASK]",
    "[MASK] [MASK] [MASK]",
    "[CLS]",
    "[CLS] [SEP] [PAD] [UNK]",
    "word",
    "a",
    "x" * 100_000,  # one 100k-character token
    " ".join(["long"] * 25_000),  # 100k-character line of words
]
BYTES_LINES = [
    b"A valid first line in an otherwise broken file.",
    b"latin-1 caf\xe9 cr\xe8me br\xfbl\xe9e",
    b"\xff\xfe\xfd invalid start bytes",
    b"truncated multibyte \xe2\x82",
    b"Another valid line about dense retrieval.",
]

if __name__ == "__main__":
    (HERE / "hostile.txt").write_text("\n".join(HOSTILE + NORMAL * 3) + "\n", encoding="utf-8")
    (HERE / "hostile_bytes.txt").write_bytes(b"\n".join(BYTES_LINES) + b"\n")
