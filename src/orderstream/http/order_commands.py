"""Order commands from HTTP: ask the order agent to end a RESERVED order.

The shop's cancel and the operator's status override both go this way. PostgreSQL may
lag the order agent, which decides: a command racing the payment or the expiry applies
only if it reaches the order agent while the order is still RESERVED.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web
from aiokafka.errors import KafkaError

from orderstream.domain import OrderStatus
from orderstream.http.encoding import error, model_response
from orderstream.http.keys import KAFKA, POOL, SETTINGS
from orderstream.http.schemas import OrderAccepted
from orderstream.topics import ORDER_COMMANDS, OrderCommand

log = logging.getLogger(__name__)


async def publish_order_command(
    request: web.Request,
    command: OrderCommand,
    done: str,
    *,
    unknown_ok: bool = False,
    owner: str | None = None,
) -> web.Response:
    """Publish ``command`` for a RESERVED order: 202, 404 when unknown, 409 when not RESERVED.

    ``done`` says in the 409 what only a RESERVED order can be ("cancelled", ...): a
    terminal order's stock is settled, it never moves again. ``unknown_ok``: an order
    PostgreSQL does not show yet is published for too (202), as a shopper's cancel right
    after the order may overtake it; the order agent keeps it for the TTL. ``owner``:
    the user who asks (a shopper's token); another user's order is 404, as unknown.
    """
    order_id = command.order_id
    async with request.app[POOL].connection() as conn, conn.cursor() as cur:
        await cur.execute("SELECT status, user_id FROM orders WHERE order_id = %s", (order_id,))
        row = await cur.fetchone()
    if row is not None and owner is not None and row[1] != owner:
        row = None  # another user's: as if unknown
    if row is None and not unknown_ok:
        raise error(web.HTTPNotFound, "order not found", order_id=order_id)
    if row is not None and row[0] != OrderStatus.RESERVED:
        raise error(
            web.HTTPConflict,
            f"order is {row[0]}: only a RESERVED order can be {done}",
            order_id=order_id,
        )
    try:
        producer = await request.app[KAFKA].producer()
        # Keyed by order id: the order agent that owns the order applies it.
        await producer.send_and_wait(
            request.app[SETTINGS].topic(ORDER_COMMANDS),
            key=order_id.encode(),
            value=command.model_dump_json().encode(),
        )
    except (ConnectionError, KafkaError) as exc:
        log.warning("%s of order %s not published: %r", command.command.value, order_id, exc)
        raise error(web.HTTPServiceUnavailable, "Kafka unavailable, retry later") from None
    status_url = f"/orders/{quote(order_id, safe='')}"
    return model_response(OrderAccepted(order_id=order_id, status_url=status_url), status=202)
