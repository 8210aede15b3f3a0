"""NodeList: the ordered node sequence of a graph, with O(1) insert, erase and membership."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class NodeList(Generic[T]):
    """A doubly linked list keyed by the items themselves; `as_list()` is cached between edits."""

    def __init__(self) -> None:
        self._next: dict[T | None, T | None] = {None: None}  # None is the sentinel before the first item
        self._prev: dict[T | None, T | None] = {None: None}
        self._cache: list[T] | None = []

    def __len__(self) -> int:
        return len(self._next) - 1

    def __contains__(self, item: object) -> bool:
        return item is not None and item in self._next

    def __iter__(self) -> Iterator[T]:
        return iter(self.as_list())

    def as_list(self) -> list[T]:
        if self._cache is None:
            items, item = [], self._next[None]
            while item is not None:
                items.append(item)
                item = self._next[item]
            self._cache = items
        return self._cache

    def first(self) -> T | None:
        return self._next[None]

    def next_of(self, item: T) -> T | None:
        return self._next[item]

    def prev_of(self, item: T) -> T | None:
        return self._prev[item]

    def insert_after(self, anchor: T | None, item: T) -> None:
        """Insert `item` after `anchor` (None: at the front)."""
        if item in self:
            raise ValueError("item is already in the list")
        following = self._next[anchor]
        self._next[anchor], self._next[item] = item, following
        self._prev[following], self._prev[item] = item, anchor
        self._cache = None

    def insert_before(self, anchor: T, item: T) -> None:
        self.insert_after(self._prev[anchor], item)

    def append(self, item: T) -> None:
        self.insert_after(self._prev[None], item)

    def remove(self, item: T) -> None:
        before, after = self._prev.pop(item), self._next.pop(item)
        self._next[before], self._prev[after] = after, before
        self._cache = None

    def replace_all(self, items: list[T]) -> None:
        """Make the list exactly `items`, in order."""
        self.__init__()
        for item in items:
            self.append(item)
