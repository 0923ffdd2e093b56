"""A circuit breaker: stop the whole run after K failed requests in a row.

Retries are per request, so a dead server (every request a 500, a timeout or a reply without a
score) would otherwise cost every row its full retry budget: rows x (--max-retries + 1)
requests, minutes to hours of backoff. The breaker counts failed requests across all worker
threads; any request that succeeds resets the count. When the count reaches the limit the run
stops: the rows already written stay, and a rerun continues from them.

    success  -> count = 0
    failure  -> count += 1; count == limit -> tripped (the caller stops the run)

A limit of 0 turns the breaker off.
"""

import threading


class CircuitBreaker:
    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0  # failed requests since the last one that succeeded
        self._lock = threading.Lock()  # workers report from their own threads

    def success(self) -> None:
        with self._lock:
            self.count = 0

    def failure(self) -> bool:
        """Count one failed request; True once `limit` have failed in a row."""
        with self._lock:
            self.count += 1
            return self.limit > 0 and self.count >= self.limit
