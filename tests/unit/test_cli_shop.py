"""The shop's commands: stock set|add|update and db seed|reset, parsed and checked before
anything is sent (no Kafka, no database)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from orderstream import cli
from orderstream.cli_shop import _progress_printer, build_stock_command, describe_command
from orderstream.seed import sample_catalog, sample_price
from orderstream.settings import Settings
from orderstream.topics import MAX_QUANTITY, StockCommand


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point Kafka and PostgreSQL at closed ports: input that got past the checks would
    fail fast with exit status 1, never 2, and send nothing anywhere."""
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"ORDERSTREAM_{name.upper()}", raising=False)
    monkeypatch.setenv("ORDERSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("ORDERSTREAM_DATABASE_URL", "postgresql://x:y@127.0.0.1:1/none")
    # main() configures logging for the process; leave pytest's handlers alone.
    monkeypatch.setattr(cli, "configure_logging", lambda *_: None)


def parsed(*argv: str, **settings: object) -> StockCommand:
    args = cli._parser().parse_args(["stock", *argv])
    return build_stock_command(Settings(**settings), args)  # type: ignore[arg-type]


def test_a_price_is_the_exact_decimal_written() -> None:
    command = parsed("set", "sku-1", "100", "--price", "19.99", "--limit", "2")
    assert command.price == Decimal("19.99")
    assert type(command.price) is Decimal
    assert (command.currency, command.max_per_user, command.quantity) == ("EUR", 2, 100)
    # On the wire as the text that was written: no float ever held it.
    assert json.loads(command.model_dump_json())["price"] == "19.99"
    assert parsed("set", "p", "1", "--price", "0.1").price == Decimal("0.1")
    assert parsed("set", "p", "1", "--price", "9999999999.9999").price == Decimal("9999999999.9999")


def test_a_new_sale_is_a_set_that_says_so() -> None:
    command = parsed("set", "drop-1", "50", "--new-sale")
    assert command.new_sale is True
    assert describe_command(command).endswith("as a new sale (per-user counts from zero)")
    assert "new_sale" not in json.loads(parsed("set", "drop-1", "50").model_dump_json())
    with pytest.raises(SystemExit):  # add and update have no --new-sale
        parsed("add", "drop-1", "5", "--new-sale")


def test_currency_defaults_to_the_settings_and_goes_with_the_price() -> None:
    assert parsed("add", "p", "3", "--price", "5", currency="USD").currency == "USD"
    assert parsed("add", "p", "3", "--price", "5", "--currency", "JPY").currency == "JPY"
    plain = parsed("set", "p", "3")
    assert (plain.price, plain.currency, plain.max_per_user) == (None, None, None)
    assert "price" not in json.loads(plain.model_dump_json())  # the message as before


def test_update_changes_the_catalog_only() -> None:
    limit_only = parsed("update", "p", "--limit", "0")
    assert (limit_only.operation.value, limit_only.quantity, limit_only.price) == (
        "update",
        None,
        None,
    )
    assert limit_only.max_per_user == 0
    assert describe_command(limit_only) == "stock update p with no per-user limit of its own"
    both = parsed("update", "p", "--price", "2.50", "--limit", "3", currency="GBP")
    assert describe_command(both) == "stock update p at 2.50 GBP at most 3 per user"


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        # Prices: an exponent, a word, a sign, not a number, too many places or digits.
        (["set", "p", "1", "--price", "1e400"], "price: '1e400' is not a price"),
        (["set", "p", "1", "--price", "abc"], "price: 'abc' is not a price"),
        (["set", "p", "1", "--price", "-1"], "price: '-1' is not a price"),
        (["set", "p", "1", "--price", "NaN"], "price: 'NaN' is not a price"),
        (["set", "p", "1", "--price", "19.999999"], "price: Decimal input should have no more"),
        (["set", "p", "1", "--price", "123456789012.5"], "price: Decimal input should have no"),
        # Currencies: lower case, alone.
        (["set", "p", "1", "--price", "1", "--currency", "eur"], "currency: 'eur' is not an"),
        (["set", "p", "1", "--currency", "EUR"], "currency: --currency goes with --price"),
        # Ids no message may carry.
        (["set", "p\x00q", "1"], "product_id: contains a control character"),
        (["set", "", "1"], "product_id: String should have at least 1 character"),
        (["set", "p" * 201, "1"], "product_id: String should have at most 200 characters"),
        # Quantities and limits: huge, negative, zero where one is needed, not a number.
        (["set", "p", "9" * 5000], "quantity: '99999999"),
        (["set", "p", str(MAX_QUANTITY + 1)], f"is too large (at most {MAX_QUANTITY})"),
        (["set", "p", "-1"], "quantity: '-1' is not a whole number of 0 or more"),
        (["add", "p", "0"], "quantity: 0 is not 1 or more"),
        (["set", "p", "1.5"], "quantity: '1.5' is not a whole number"),
        (["set", "p", "1", "--limit", "-2"], "limit: '-2' is not a whole number of 0 or more"),
        (["update", "p", "--limit", "99999999999"], "limit: '99999999999' is too large"),
        (["update", "p"], "stock update needs --price or --limit"),
    ],
)
def test_bad_stock_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert cli.main(["stock", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("orderstream: invalid input: ")
    assert reason in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--products", "0"], "products: 0 is not 1 or more"),
        (["--products", "100001"], "products: 100001 is too many (at most 100,000)"),
        (["--stock", "-5"], "stock: '-5' is not a whole number of 0 or more"),
        (["--prefix", "a\nb"], "product_id: contains a control character"),
        (["--prefix", "x" * 198], "product_id: String should have at most 200 characters"),
    ],
)
def test_bad_seed_input_sends_nothing(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert cli.main(["db", "seed", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert reason in err
    assert err.count("\n") == 1, err


def test_reset_without_yes_refuses_saying_what_it_would_delete(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["db", "reset"]) == 2  # the database (a closed port) is never asked
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    for table in ("orders", "order_items", "order_events", "product_stock", "idempotency_keys"):
        assert table in err
    assert "schema public" in err
    assert "Kafka keeps its history" in err
    assert "--yes" in err


def test_the_sample_catalog_names_every_product_whole() -> None:
    commands = sample_catalog(Settings(currency="CHF"), 12, 7, "demo-")
    assert [c.product_id for c in commands[:2]] == ["demo-001", "demo-002"]
    assert commands[-1].product_id == "demo-012"
    for command in commands:
        assert (command.operation.value, command.quantity, command.currency) == ("set", 7, "CHF")
        assert command.max_per_user == 0  # a second run removes a limit set since
        assert command.price is not None
        assert command.price.as_tuple().exponent == -2
        assert Decimal("1.99") <= command.price <= Decimal("99.98")
    assert len({c.price for c in commands}) == len(commands)  # prices vary per product
    assert sample_catalog(Settings(), 12, 7, "demo-") == [
        c.model_copy(update={"currency": "EUR"}) for c in commands
    ]  # the same again on a second run
    assert sample_price(1) == Decimal("16.98")
    assert sample_catalog(Settings(), 1000, 1, "")[-1].product_id == "1000"
    with pytest.raises(ValidationError):
        sample_catalog(Settings(), 1, 1, "bad\x00")


def test_seed_progress_is_told_about_every_tenth(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = _progress_printer(1000)
    for done in range(50, 1001, 50):
        progress(done)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  100/1000 published (10 %)"
    assert lines[-1] == "  1000/1000 published (100 %)"
    assert len(lines) == 10
