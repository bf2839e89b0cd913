"""Byte-pair-encoding merges learnt in plain Python, so the same corpus always gives the same vocabulary.

`tokenizers`' BpeTrainer breaks ties between equally frequent pairs by an order that changes
from process to process (measured here: six runs on the organism's corpus gave six different
vocabularies), which would make the organism's recipe irreproducible. The corpus is a few
hundred sentences, so the textbook loop is instant: count adjacent pairs over the distinct
words weighted by frequency, merge the most frequent pair (ties: the alphabetically first),
repeat until the vocabulary is full. The result loads into `tokenizers.models.BPE` as is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def learn_bpe(
    words: Iterable[str], vocab_size: int, special_tokens: Sequence[str], prefix: str
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a BPE over `words` (one entry per occurrence), `prefix` marking non-initial pieces.

    The vocabulary is the special tokens, then every character (initial and prefixed) in sorted
    order, then one token per merge, until it holds `vocab_size` tokens or no pair is left.
    """
    counts = Counter(words)
    pieces = {word: [word[0], *(prefix + char for char in word[1:])] for word in sorted(counts)}
    vocab = list(dict.fromkeys([*special_tokens, *sorted({p for split in pieces.values() for p in split})]))
    known = set(vocab)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, split in pieces.items():
            for pair in zip(split, split[1:]):
                pairs[pair] += counts[word]
        if not pairs:
            break
        first, second = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = first + second.removeprefix(prefix)
        merges.append((first, second))
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        for word, split in pieces.items():
            pieces[word] = _merge(split, first, second, merged)
    return {token: index for index, token in enumerate(vocab)}, merges


def _merge(split: list[str], first: str, second: str, merged: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(split):
        if i + 1 < len(split) and split[i] == first and split[i + 1] == second:
            out.append(merged)
            i += 2
        else:
            out.append(split[i])
            i += 1
    return out
