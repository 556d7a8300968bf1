"""aio-pika's robust connection over several broker addresses, tried in turn.

A deployment without a load balancer lists its cluster's nodes in ``WARREN_AMQP_URL``
(``shared.config.amqp_urls``). :class:`FailoverConnection` is aio-pika's
``RobustConnection``, which keeps restoring channels, queues, bindings and consumers
after every reconnection, with two changes to how it reconnects:

- a connection attempt is a round of the addresses: the one that answered last first
  (after a short network blip the client finds its node again), then the others in
  turn, until one answers. A node that is down costs one refused connection. At
  start-up, fail fast means that a whole round failed;
- between rounds that failed, the pause doubles from ``reconnect_interval`` up to
  ``max_reconnect_interval``: a broker away for long is not asked every second by every
  process. With one address, a round is one attempt.

aio-pika takes one URL and has no hook per attempt. The class overrides the robust
connection's attempt (``RobustConnection.__connect_transport``, a private method of
aio-pika 9 and 10) to make it a round, which keeps aio-pika's reconnect loop, fail fast
and restore logic as they are; the check below turns an aio-pika that renamed it into
an error at import, not a connection stuck on one address.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from aio_pika import RobustConnection
from yarl import URL

from shared.config import without_password

log = logging.getLogger(__name__)

MAX_RECONNECT_INTERVAL_S: Final = 5.0

_ATTEMPT: Final = "_RobustConnection__connect_transport"
if not callable(getattr(RobustConnection, _ATTEMPT, None)):  # pragma: no cover
    raise ImportError(
        f"aio_pika.RobustConnection has no {_ATTEMPT[17:]}(): this aio-pika is not one "
        "that shared/messaging/failover.py knows how to rotate broker addresses in"
    )


class FailoverConnection(RobustConnection):
    def __init__(
        self,
        urls: Sequence[str | URL],
        *,
        max_reconnect_interval: float = MAX_RECONNECT_INTERVAL_S,
        **kwargs: Any,
    ) -> None:
        """``urls``: the addresses, in the order of the first round. ``kwargs`` are
        ``RobustConnection``'s (``reconnect_interval``, ``client_properties``...)."""
        if not urls:
            raise ValueError("FailoverConnection needs at least one address")
        self._addresses = tuple(URL(str(url)) for url in urls)
        self._next = 0
        self._failed_rounds = 0
        self._base_interval = 1.0
        self._max_interval = max_reconnect_interval
        # Why each address failed in the last round that failed (for the error at
        # start-up); empty once connected.
        self.failures: dict[URL, Exception] = {}
        super().__init__(self._addresses[0], **kwargs)

    @property
    def addresses(self) -> tuple[URL, ...]:
        return self._addresses

    @property
    def failed_rounds(self) -> int:
        """Rounds of the addresses that failed since the last connection was made."""
        return self._failed_rounds

    # RobustConnection sets ``reconnect_interval`` from its parameters and sleeps as
    # long as it reads here after each attempt.
    @property
    def reconnect_interval(self) -> float:
        if self._failed_rounds == 0:
            return self._base_interval
        backoff = self._base_interval * 2 ** (self._failed_rounds - 1)
        return float(min(backoff, max(self._max_interval, self._base_interval)))

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._base_interval = float(value)

    async def _RobustConnection__connect_transport(self) -> None:
        attempt = getattr(super(), _ATTEMPT)
        failures: dict[URL, Exception] = {}
        last: Exception | None = None
        for _ in self._addresses:
            address = self._addresses[self._next]
            self.url = address
            try:
                await attempt()
            except Exception as exc:  # noqa: BLE001 - the loop judges the round's last one
                failures[address] = last = exc
                self._next = (self._next + 1) % len(self._addresses)
                # Each attempt at DEBUG, as aio-pika's own: an outage is logged once, by
                # shared.messaging.broker.ConnectionWatch, with the address lost and the
                # one that took over.
                log.debug("broker address did not answer",
                          extra={"broker": without_password(str(address)), "error": repr(exc)})
                continue
            self._failed_rounds = 0
            self.failures = {}
            return
        self._failed_rounds += 1
        self.failures = failures
        assert last is not None
        raise last
