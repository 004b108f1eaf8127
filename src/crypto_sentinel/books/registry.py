"""The live books of a process, by (exchange, product): filled by the engine's book
processor, read by the API and push. Listeners hear of every product whose book changed."""

from __future__ import annotations

from collections.abc import Callable

from crypto_sentinel.books.orderbook import OrderBook

BookListener = Callable[[OrderBook], None]


class BookRegistry:
    def __init__(self) -> None:
        self._books: dict[tuple[str, str], OrderBook] = {}
        self._listeners: list[BookListener] = []

    def book(self, exchange: str, product_id: str) -> OrderBook:
        """The book of a product, created empty (not valid) on first use."""
        key = (exchange, product_id)
        found = self._books.get(key)
        if found is None:
            found = self._books[key] = OrderBook(exchange, product_id)
        return found

    def get(self, exchange: str, product_id: str) -> OrderBook | None:
        return self._books.get((exchange, product_id))

    def products(self) -> list[tuple[str, str]]:
        return sorted(self._books)

    def subscribe(self, listener: BookListener) -> Callable[[], None]:
        """Call `listener` after each chunk for every book it changed; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def changed(self, book: OrderBook) -> None:
        for listener in list(self._listeners):
            listener(book)
