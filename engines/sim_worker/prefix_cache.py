"""A bounded, page-aligned prefix cache over token ids (the sim's radix cache).

A prompt is cut into full pages; page i is keyed by a hash chained over pages 0..i, so a key
stands for the whole prefix up to that page and lookup walks keys until the first miss. Pages are
evicted least-recently-used, and a hit touches a prefix's pages from its tail to its head so the
head stays the most recent: like a radix tree, leaves go before the pages they extend.

A namespace (SGLang's `extra_key`, with `cache_salt` in front) seeds the chain, so prompts of
different namespaces share no page: what the gateway uses to keep tenants' caches apart.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

import xxhash


def _page_keys(tokens: Sequence[int], page_size: int, namespace: str = "") -> list[int]:
    keys: list[int] = []
    prev = xxhash.xxh64(namespace.encode()).intdigest() if namespace else 0
    for start in range(0, len(tokens) - page_size + 1, page_size):
        h = xxhash.xxh64(prev.to_bytes(8, "little"))
        h.update(array("q", tokens[start : start + page_size]).tobytes())
        prev = h.intdigest()
        keys.append(prev)
    return keys


class PrefixCache:
    def __init__(self, page_size: int, max_pages: int) -> None:
        if page_size <= 0 or max_pages <= 0:
            raise ValueError("page_size and max_pages must be positive")
        self.page_size = page_size
        self.max_pages = max_pages
        self._pages: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def cached_tokens(self) -> int:
        return len(self._pages) * self.page_size

    def match(self, tokens: Sequence[int], namespace: str = "") -> int:
        """Tokens of `tokens` served from the cache, page-aligned.

        At most the full pages before the last token: SGLang always computes at least one token
        so the forward produces logits to sample from.
        """
        usable = (max(len(tokens) - 1, 0) // self.page_size) * self.page_size
        hit: list[int] = []
        for key in _page_keys(tokens[:usable], self.page_size, namespace):
            if key not in self._pages:
                break
            hit.append(key)
        for key in reversed(hit):
            self._pages.move_to_end(key)
        return len(hit) * self.page_size

    def insert(self, tokens: Sequence[int], namespace: str = "") -> None:
        """Remember every full page of `tokens`, evicting the least recently used pages."""
        for key in reversed(_page_keys(tokens, self.page_size, namespace)):
            self._pages[key] = None
            self._pages.move_to_end(key)
        while len(self._pages) > self.max_pages:
            self._pages.popitem(last=False)

    def clear(self) -> None:
        self._pages.clear()
