"""Grounded citations: find a quoted phrase in the content and say where it is.

With ``evidence`` on, the model copies, for each rule or exception it cites, the exact words of
the content that meet it. :func:`find_quote` looks the quote up in the content *after
normalisation* on both sides, so harmless differences do not make a faithful quote fail:

* Unicode NFKC (full-width letters, ligatures, composed vs combining accents) and casefold;
* runs of whitespace (spaces, tabs, newlines, non-breaking spaces) count as one space, and
  leading/trailing whitespace of the quote is ignored;
* straight and curly quotes, primes and guillemets match each other, as do hyphen, dashes
  and the minus sign; an ellipsis character matches three dots.

The match is reported as character offsets ``(start, end)`` into the ORIGINAL text, so
``text[start:end]`` is the quoted passage as the author wrote it: every normalised character
remembers the span of original characters it came from (a grapheme NFKC composes keeps its
combining marks; a full-width letter maps back to that one character).
"""

from __future__ import annotations

import unicodedata

__all__ = ["find_quote", "normalise"]

# characters that are the same for grounding purposes (after NFKC, which already folds
# full-width forms and most compatibility characters)
_EQUIV = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u02bc\u0060\u00b4", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\u2039\u203a", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
}


def _fold(chunk: str) -> str:
    """NFKC + casefold + equivalences of a chunk that NFKC treats as a unit."""
    s = unicodedata.normalize("NFKC", chunk).casefold()
    s = unicodedata.normalize("NFKC", s)  # casefold can un-normalise (e.g. U+0130)
    return "".join(_EQUIV.get(c, c) for c in s).replace("\u2026", "...")


def _attaches(c: str) -> bool:
    """A character NFKC may compose with the one before it: a combining mark (any class,
    including spacing marks and variation selectors) or a Hangul vowel/final jamo."""
    return unicodedata.category(c) in ("Mn", "Mc", "Me") or "\u1160" <= c <= "\u11ff"


def _chunks(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` that normalise independently: a starter character with the combining
    marks that follow it (NFKC composes within such a run, never across starters)."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and _attaches(text[j]):
            j += 1
        spans.append((i, j))
        i = j
    return spans


def normalise(text: str) -> tuple[str, list[int], list[int]]:
    """The normalised text and, per normalised character, the start and end offsets of the
    original characters it came from. Whitespace runs become one space (mapped to the whole
    run); leading and trailing whitespace is kept as one space so offsets stay honest."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for a, b in _chunks(text):
        folded = _fold(text[a:b])
        for c in folded:
            if c.isspace():
                if out and out[-1] == " ":
                    ends[-1] = b  # extend the run
                    continue
                c = " "
            out.append(c)
            starts.append(a)
            ends.append(b)
    return "".join(out), starts, ends


def find_quote(text: str, quote: str) -> tuple[int, int] | None:
    """Offsets ``(start, end)`` in ``text`` of the first occurrence of ``quote`` after
    normalisation (see the module docstring), or None when it is not there or is empty."""
    needle = normalise(quote)[0].strip(" ")
    if not needle:
        return None
    hay, starts, ends = normalise(text)
    if len(needle) > len(hay):
        return None
    i = hay.find(needle)
    if i < 0:
        return None
    j = i + len(needle) - 1
    return starts[i], ends[j]
