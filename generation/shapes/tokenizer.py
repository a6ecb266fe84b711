"""A word-level CLIPTokenizer over the shapes world's vocabulary.

transformers 5.x builds CLIPTokenizer on a BPE model with the ``</w>`` end-of-word suffix, so a
word becomes one token only if the merges list rebuilds it from its characters (with no merges
every word falls apart into characters, which are unknown). ``bpe_merges`` builds such a list by
simulating BPE on each word and appending the merges it still lacks; a merge appended after all
earlier ones can never fire inside a word that earlier merges already rebuild, so every word ends
as exactly one token.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import CLIPTokenizer

from generation.shapes.world import vocabulary

MAX_LENGTH = 32  # tokens per caption, with the start and end tokens; the longest caption needs 27
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"


def _symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + SUFFIX]


def _apply(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the adjacent pair with the lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:], strict=False))]
        ranked = [(r, i) for r, i in pairs if r is not None]
        if not ranked:
            break
        _, i = min(ranked)
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def bpe_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """A merges list under which every word is rebuilt into one symbol."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _apply(_symbols(word), ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            symbols = _apply(symbols, ranks)
    return merges


def build_tokenizer(words: Sequence[str] | None = None) -> CLIPTokenizer:
    """The world's tokenizer: ids 0/1 are the start/end tokens (end doubles as pad and unknown)."""
    words = list(words if words is not None else vocabulary())
    merges = bpe_merges(words)
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    symbols: list[str] = []
    for word in words:
        symbols += _symbols(word)
    symbols += [a + b for a, b in merges]
    for w in words:  # world words first after the specials, so their ids are stable and small
        vocab.setdefault(w + SUFFIX, len(vocab))
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    return tokenizer


def word_ids(tokenizer: CLIPTokenizer, words: Sequence[str]) -> dict[str, list[int]]:
    """The ids each word encodes to, without start/end tokens (one id per world word)."""
    return {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in words}
