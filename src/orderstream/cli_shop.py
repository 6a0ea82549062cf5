"""The shop's commands: ``stock set|add|update`` and ``db seed|reset``.

Input is checked here before anything is sent, and refused with one line (InputError,
exit 2): a price is read as an exact decimal from its text, never through a float.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from orderstream.settings import Settings

if TYPE_CHECKING:
    from orderstream.topics import StockCommand

T = TypeVar("T")

SubParsers = argparse._SubParsersAction  # argparse has no public name for it

# Digits, optionally a point and more digits: no sign, exponent, NaN or infinity. How many
# places and digits a price may have is the message schema's to say (topics.StockCommand).
_PRICE_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_WHOLE_NUMBER = re.compile(r"^[0-9]+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
MAX_SEED_PRODUCTS = 100_000

RESET_HELP = (
    """\
Delete every row of orders, order_items, order_events, product_stock (and
idempotency_keys) in ORDERSTREAM_DATABASE_SCHEMA, with TRUNCATE, and print how many
rows each held. Stop the sink (or `orderstream run`) first. Kafka keeps its history and
the stock agent its stock: the tables stay empty until something new is decided.

To rebuild the tables from Kafka's history, reset the sink's consumer group (with
ORDERSTREAM_SINK_GROUP and ORDERSTREAM_TOPIC_PREFIX, if set), then start the sink:

  scripts/kafka-tool.sh kafka-consumer-groups --bootstrap-server 127.0.0.1:9092 \\
    --group orderstream-sink --reset-offsets --to-earliest \\
    --topic order-events --topic stock-changes --execute

For a fresh start with no history at all, stop every process, then delete the topics
(with the default prefix and app id) and make them again:

  scripts/kafka-tool.sh kafka-topics --bootstrap-server 127.0.0.1:9092 --delete \\
    --topic '(order-requests|stock-commands|order-events|stock-changes|order-commands|"""
    """payment-requests|payment-results|line-outcomes)(-dlq)?|orderstream-.*-changelog'
  orderstream topics create && orderstream db reset --yes
"""
)


class InputError(ValueError):
    """Command-line input no command may carry: told in one line, exit status 2."""


def add_stock_commands(stock_ops: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``stock set``, ``stock add`` and ``stock update`` to the ``stock`` command."""
    for operation, help_text, quantity_help in (
        ("set", "make P's available stock exactly N (and set its catalog)", "0 or more"),
        ("add", "add N to P's available stock (and set its catalog)", "1 or more"),
        ("update", "change P's catalog only (price, limit): its stock stays", None),
    ):
        sub = stock_ops.add_parser(operation, help=help_text, description=help_text)
        sub.add_argument("product_id", metavar="P")
        if quantity_help is not None:
            sub.add_argument("quantity", metavar="N", help=quantity_help)
        sub.add_argument(
            "--price",
            help="unit price of the lines decided from now on: an exact decimal of at most "
            "4 places, like 19.99",
        )
        sub.add_argument(
            "--currency",
            metavar="CODE",
            help="ISO 4217 code of --price, like EUR (default: ORDERSTREAM_CURRENCY)",
        )
        sub.add_argument(
            "--limit",
            metavar="N",
            help="the most one user may hold or buy of P; 0 removes P's own limit "
            "(ORDERSTREAM_MAX_PER_USER applies again)",
        )
        if operation == "set":
            sub.add_argument(
                "--new-sale",
                action="store_true",
                help="a new sale of P begins: what each user holds or bought of P counts "
                "from zero again (reservations of the last sale keep their holds)",
            )
        sub.set_defaults(handler=stock_command, operation=operation, quantity=None, new_sale=False)


def add_db_commands(db_ops: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``db seed`` and ``db reset`` to the ``db`` command."""
    seed_help = (
        "publish sample products to buy (ids PREFIX001, PREFIX002, ...), each with a stock, "
        "a price in ORDERSTREAM_CURRENCY and no per-user limit of its own. Idempotent "
        "enough to run twice: a second run sets the same available stock and prices again "
        "(what was sold stays sold)"
    )
    seed = db_ops.add_parser("seed", help="publish sample products to buy", description=seed_help)
    seed.add_argument(
        "--products",
        default="10",
        metavar="N",
        help=f"how many (default 10, at most {MAX_SEED_PRODUCTS:,})",
    )
    seed.add_argument("--stock", default="100", metavar="N", help="units of each (default 100)")
    seed.add_argument("--prefix", default="sample-", help="product id prefix (default sample-)")
    seed.set_defaults(handler=seed_command)

    reset = db_ops.add_parser(
        "reset",
        help="empty the pipeline's tables (asks for --yes)",
        description=RESET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reset.add_argument("--yes", action="store_true", help="really delete the rows")
    reset.set_defaults(handler=reset_command)


def whole_number(name: str, text: str, minimum: int) -> int:
    """Return ``text`` as an int of at least ``minimum``, or raise InputError."""
    from orderstream.topics import MAX_QUANTITY

    if not _WHOLE_NUMBER.match(text):
        raise InputError(f"{name}: {_shown(text)} is not a whole number of {minimum} or more")
    # Checked by length first: int() of thousands of digits is refused (or slow).
    if len(text) > len(str(MAX_QUANTITY)) or int(text) > MAX_QUANTITY:
        raise InputError(f"{name}: {_shown(text)} is too large (at most {MAX_QUANTITY})")
    value = int(text)
    if value < minimum:
        raise InputError(f"{name}: {value} is not {minimum} or more")
    return value


def parse_price(text: str) -> Decimal:
    """Return the exact decimal a price's text says, or raise InputError."""
    if not _PRICE_TEXT.match(text):
        raise InputError(
            f"price: {_shown(text)} is not a price (digits, a point and at most 4 places: 19.99)"
        )
    return Decimal(text)


def build_stock_command(settings: Settings, args: argparse.Namespace) -> StockCommand:
    """Return the StockCommand that ``stock set|add|update`` arguments ask for."""
    from orderstream.domain import StockOperation
    from orderstream.topics import StockCommand

    operation = StockOperation(args.operation)
    quantity = None
    if args.quantity is not None:
        quantity = whole_number("quantity", args.quantity, 1 if operation.value == "add" else 0)
    price = None if args.price is None else parse_price(args.price)
    currency = args.currency
    if currency is not None:
        if price is None:
            raise InputError("currency: --currency goes with --price")
        if not _CURRENCY.match(currency):
            raise InputError(
                f"currency: {_shown(currency)} is not an ISO 4217 code (three capital letters: EUR)"
            )
    elif price is not None:
        currency = settings.currency
    limit = None if args.limit is None else whole_number("limit", args.limit, 0)
    if operation is StockOperation.UPDATE and price is None and limit is None:
        raise InputError("stock update needs --price or --limit (or both)")
    # The schema has the last word (id, bounds, digits and places of the price).
    return StockCommand(
        product_id=args.product_id,
        operation=operation,
        quantity=quantity,
        price=price,
        currency=currency,
        max_per_user=limit,
        new_sale=True if args.new_sale else None,
    )


def describe_command(command: StockCommand) -> str:
    """Return what a stock set, add or update says, for a person to read."""
    parts = [f"stock {command.operation.value} {command.product_id}"]
    if command.quantity is not None:
        parts.append(str(command.quantity))
    if command.price is not None:
        parts.append(f"at {command.price} {command.currency}")
    if command.max_per_user == 0:
        parts.append("with no per-user limit of its own")
    elif command.max_per_user is not None:
        parts.append(f"at most {command.max_per_user} per user")
    if command.new_sale:
        parts.append("as a new sale (per-user counts from zero)")
    return " ".join(parts)


def stock_command(settings: Settings, args: argparse.Namespace) -> int:
    """Publish one stock set, add or update."""
    from orderstream.producer import publish_stock_commands
    from orderstream.topics import STOCK_COMMANDS

    command = build_stock_command(settings, args)
    [(partition, offset)] = _run_kafka(settings, publish_stock_commands(settings, [command]))
    print(
        f"{describe_command(command)}: published to {settings.topic(STOCK_COMMANDS)} "
        f"partition {partition} offset {offset}; the worker applies it in order with that "
        "product's requests"
    )
    return 0


def seed_command(settings: Settings, args: argparse.Namespace) -> int:
    """Publish the sample catalog, telling the progress as it goes."""
    from orderstream.seed import publish_catalog, sample_catalog
    from orderstream.topics import STOCK_COMMANDS

    products = whole_number("products", args.products, 1)
    if products > MAX_SEED_PRODUCTS:
        raise InputError(f"products: {products} is too many (at most {MAX_SEED_PRODUCTS:,})")
    stock = whole_number("stock", args.stock, 0)
    commands = sample_catalog(settings, products, stock, args.prefix)  # all valid, or none sent
    topic = settings.topic(STOCK_COMMANDS)
    print(f"publishing {products} sample products to {topic}")
    _run_kafka(settings, publish_catalog(settings, commands, _progress_printer(products)))
    prices = sorted(command.price for command in commands if command.price is not None)
    first, last = commands[0].product_id, commands[-1].product_id
    span = f"{first} .. {last}" if products > 1 else first
    print(
        f"seeded {products} products ({span}), {stock} units each at {prices[0]} to "
        f"{prices[-1]} {settings.currency}; once the worker has applied them, "
        f"GET /products/{first} shows one"
    )
    return 0


def _progress_printer(total: int) -> Callable[[int], None]:
    """Return a callback that prints progress every ~10 % of ``total``, or every second."""
    step = max(1, total // 10)
    last = {"done": 0, "at": time.monotonic()}

    def progress(done: int) -> None:
        now = time.monotonic()
        if done == total or done - last["done"] >= step or now - last["at"] >= 1.0:
            print(f"  {done}/{total} published ({done * 100 // total} %)", flush=True)
            last.update(done=done, at=now)

    return progress


def reset_command(settings: Settings, args: argparse.Namespace) -> int:
    """Empty the pipeline's tables, with --yes only."""
    from orderstream.sink.reset import RESET_TABLES, reset_tables

    schema = settings.database_schema
    if not args.yes:
        print(
            f"orderstream: db reset would delete every row of {', '.join(RESET_TABLES)} in "
            f"schema {schema}; Kafka keeps its history (see `orderstream db reset --help` to "
            "rebuild from it); run again with --yes",
            file=sys.stderr,
        )
        return 2
    deleted = asyncio.run(reset_tables(settings))
    counts = ", ".join(f"{table} {rows}" for table, rows in deleted.items())
    print(f"rows deleted in schema {schema}: {counts}")
    return 0


def _run_kafka(settings: Settings, publishing: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that publishes; a Kafka that does not answer is told in one line."""
    from aiokafka.errors import KafkaError

    try:
        return asyncio.run(publishing)
    except KafkaError as exc:
        # An OSError: main() prints it in one line, exit status 1.
        raise ConnectionError(f"Kafka at {settings.kafka_bootstrap}: {exc!r}") from exc


def _shown(text: str) -> str:
    """Return user input quoted for a message, cut short when long."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
