"""Unit tests for plugin/domain/money.py: minor units, exact allocation, Klarna's tax tolerance."""

from __future__ import annotations

import itertools
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.domain.money import (
    MoneyError,
    exponent,
    format_minor,
    share,
    tax_of_gross,
    tax_rate_basis_points,
    tax_within_tolerance,
    to_minor,
)

CURRENCIES = [
    pytest.param("JPY", 0, id="JPY-0-decimals"),
    pytest.param("EUR", 2, id="EUR-2-decimals"),
    pytest.param("KWD", 3, id="KWD-3-decimals"),
]

# Every decimal with at most 15 significant digits survives float -> repr -> Decimal unchanged.
QUANTIZED = st.integers(min_value=-(10**15 - 1), max_value=10**15 - 1)


# --- exponent ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "expected"),
    [
        pytest.param("JPY", 0, id="JPY"),
        pytest.param("jpy", 0, id="lowercase-jpy"),
        pytest.param("EUR", 2, id="EUR"),
        pytest.param("USD", 2, id="USD"),
        pytest.param("KWD", 3, id="KWD"),
        pytest.param("BHD", 3, id="BHD"),
    ],
)
def test_exponent_of_known_currencies(currency, expected):
    # given a currency code / when its exponent is asked / then it is ISO 4217's
    assert exponent(currency) == expected


@pytest.mark.parametrize(
    "currency",
    [
        pytest.param("", id="empty"),
        pytest.param("EU", id="too-short"),
        pytest.param("EURO", id="too-long"),
        pytest.param("E1R", id="digit"),
        pytest.param("€UR", id="symbol"),
        pytest.param(" EU", id="space"),
    ],
)
def test_bad_currency_codes_are_rejected(currency):
    # given a string that is not an ISO 4217 code
    # when it is used as a currency / then MoneyError is raised, never a guessed exponent
    with pytest.raises(MoneyError):
        exponent(currency)
    with pytest.raises(MoneyError):
        to_minor(1, currency)
    with pytest.raises(MoneyError):
        format_minor(100, currency)


# --- to_minor ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param(130.0, "JPY", 130, id="130.0-JPY"),
        pytest.param(130.0, "EUR", 13000, id="130.0-EUR"),
        pytest.param(130.0, "KWD", 130000, id="130.0-KWD"),
        pytest.param(0.0, "EUR", 0, id="zero-float"),
        pytest.param(0.3, "EUR", 30, id="0.3-EUR-not-binary-exact"),
        pytest.param(0.29, "EUR", 29, id="0.29-EUR-float-times-100-is-28.999"),
        pytest.param(19.99, "EUR", 1999, id="19.99-EUR"),
        pytest.param(1.005, "KWD", 1005, id="1.005-KWD"),
        pytest.param(4.35, "KWD", 4350, id="4.35-KWD"),
        pytest.param(0.1 + 0.2, "EUR", 30, id="0.1+0.2-float-noise-EUR"),
        pytest.param(1.1 + 2.2, "KWD", 3300, id="1.1+2.2-float-noise-KWD"),
        pytest.param(-12.5, "EUR", -1250, id="negative"),
        pytest.param(7, "JPY", 7, id="int"),
        pytest.param("12.34", "EUR", 1234, id="str"),
        pytest.param(Decimal("12.340"), "EUR", 1234, id="decimal-trailing-zero"),
        pytest.param(1e3, "JPY", 1000, id="float-1e3"),
    ],
)
def test_to_minor_examples(amount, currency, expected):
    # given an amount as Saleor (or a caller) sends it
    # when it is converted / then the minor units are exact
    assert to_minor(amount, currency) == expected


@pytest.mark.parametrize(("currency", "exp"), CURRENCIES)
@settings(max_examples=300)
@given(n=QUANTIZED)
def test_to_minor_is_exact_for_every_quantized_float(currency, exp, n):
    # given the float Saleor renders for a quantized amount of n minor units
    amount = n / 10**exp
    # when it is converted
    minor = to_minor(amount, currency)
    # then it is n, never off by one
    assert minor == n


@pytest.mark.parametrize(("currency", "exp"), CURRENCIES)
@settings(max_examples=200)
@given(n=QUANTIZED)
def test_to_minor_is_exact_for_quantized_strings_and_decimals(currency, exp, n):
    # given the same amount as a string and as a Decimal
    text = str(Decimal(n).scaleb(-exp))
    # when each is converted / then both give n
    assert to_minor(text, currency) == n
    assert to_minor(Decimal(text), currency) == n


@pytest.mark.parametrize(("currency", "exp"), CURRENCIES)
@settings(max_examples=200)
@given(n=st.integers(min_value=-(10**13), max_value=10**13).filter(lambda n: n % 10 != 0))
def test_to_minor_rejects_one_decimal_more_than_the_currency_has(currency, exp, n):
    # given an amount with one decimal more than the currency allows
    amount = n / 10 ** (exp + 1)
    # when it is converted / then it is rejected rather than rounded
    with pytest.raises(MoneyError):
        to_minor(amount, currency)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        pytest.param(1.5, "JPY", id="half-yen"),
        pytest.param(0.125, "EUR", id="eighth-euro"),
        pytest.param(0.0005, "KWD", id="half-fils"),
        pytest.param("1.001", "EUR", id="str-three-decimals-EUR"),
        pytest.param(Decimal("0.01"), "JPY", id="decimal-cent-of-yen"),
    ],
)
def test_to_minor_rejects_more_precision_than_the_currency_has(amount, currency):
    # given an amount finer than the currency's minor unit
    # when it is converted / then MoneyError is raised
    with pytest.raises(MoneyError):
        to_minor(amount, currency)


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param(float("nan"), id="float-nan"),
        pytest.param(float("inf"), id="float-inf"),
        pytest.param(float("-inf"), id="float-minus-inf"),
        pytest.param("NaN", id="str-nan"),
        pytest.param(Decimal("Infinity"), id="decimal-inf"),
        pytest.param(Decimal("sNaN"), id="decimal-snan"),
        pytest.param("abc", id="not-a-number"),
        pytest.param("", id="empty-string"),
        pytest.param(None, id="none"),
    ],
)
def test_to_minor_rejects_non_finite_and_non_numbers(amount):
    # given something that is not a finite amount
    # when it is converted / then MoneyError (a ValueError) is raised
    with pytest.raises(MoneyError):
        to_minor(amount, "EUR")


# --- format_minor -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param(12345, "EUR", "123.45 EUR", id="EUR"),
        pytest.param(130, "JPY", "130 JPY", id="JPY-no-point"),
        pytest.param(5, "KWD", "0.005 KWD", id="KWD-leading-zeros"),
        pytest.param(-5, "EUR", "-0.05 EUR", id="negative"),
        pytest.param(0, "EUR", "0.00 EUR", id="zero"),
        pytest.param(100, "eur", "1.00 EUR", id="lowercase-code-uppercased"),
    ],
)
def test_format_minor_examples(amount, currency, expected):
    # given minor units / when formatted / then major units with the currency's decimals
    assert format_minor(amount, currency) == expected


@pytest.mark.parametrize(("currency", "exp"), CURRENCIES)
@settings(max_examples=200)
@given(n=QUANTIZED)
def test_format_minor_round_trips_through_to_minor(currency, exp, n):
    # given n minor units
    # when formatted and parsed back (as text and as the float Saleor would send)
    number, code = format_minor(n, currency).split(" ")
    # then nothing is lost
    assert code == currency
    assert len(number.partition(".")[2]) == exp
    assert to_minor(number, currency) == n
    assert to_minor(float(number), currency) == n


# --- tax_rate_basis_points --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        pytest.param(0.0, 0, id="zero-float"),
        pytest.param(0.25, 2500, id="25-percent"),
        pytest.param(0.19, 1900, id="19-percent"),
        pytest.param(0.077, 770, id="7.7-percent"),
        pytest.param(0.0255, 255, id="2.55-percent"),
        pytest.param("0.23", 2300, id="str"),
    ],
)
def test_tax_rate_basis_points(rate, expected):
    # given Saleor's fractional tax rate / when converted / then Klarna's hundredths of a percent
    assert tax_rate_basis_points(rate) == expected


# --- share ------------------------------------------------------------------------------------


@st.composite
def partitions(draw):
    """(quantity, [taken, ...]): the units 0..quantity cut into consecutive blocks."""
    quantity = draw(st.integers(min_value=1, max_value=1000))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=quantity), max_size=8))
    bounds = [0, *sorted(cuts), quantity]
    return quantity, [b - a for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300)
@given(total=st.integers(min_value=0, max_value=10**12), partition=partitions())
def test_shares_of_any_partition_sum_to_the_total(total, partition):
    # given a line total for `quantity` units and the units cut into consecutive blocks
    quantity, blocks = partition
    # when each block takes its share
    shares, before = [], 0
    for taken in blocks:
        shares.append(share(total, quantity, before, taken))
        before += taken
    # then the shares sum to the total exactly, and each is within 1 of the exact proportion
    assert sum(shares) == total
    for taken, part in zip(blocks, shares, strict=True):
        assert part >= 0
        assert abs(part * quantity - total * taken) < quantity  # |part - total*taken/quantity| < 1


@pytest.mark.parametrize(
    ("total", "quantity", "blocks", "expected"),
    [
        pytest.param(10, 3, [1, 1, 1], [3, 3, 4], id="10-over-3-units"),
        pytest.param(100, 3, [2, 1], [66, 34], id="100-over-2+1"),
        pytest.param(0, 4, [1, 3], [0, 0], id="zero-priced-line"),
        pytest.param(7, 1, [1], [7], id="single-unit"),
        pytest.param(5, 2, [0, 2], [0, 5], id="empty-block"),
    ],
)
def test_share_examples(total, quantity, blocks, expected):
    # given a line and consecutive blocks of its units / when shared / then floor allocation
    before, shares = 0, []
    for taken in blocks:
        shares.append(share(total, quantity, before, taken))
        before += taken
    assert shares == expected


@pytest.mark.parametrize(
    ("quantity", "before", "taken"),
    [
        pytest.param(3, 2, 2, id="past-the-end"),
        pytest.param(3, -1, 1, id="negative-before"),
        pytest.param(3, 1, -1, id="negative-taken"),
    ],
)
def test_share_rejects_units_out_of_range(quantity, before, taken):
    # given units outside 0..quantity / when shared / then MoneyError
    with pytest.raises(MoneyError):
        share(100, quantity, before, taken)


def test_share_of_a_line_without_units_is_zero():
    # given a line with quantity 0 / when shared / then nothing, rather than a division by zero
    assert share(100, 0, 0, 0) == 0


# --- tax_of_gross / tax_within_tolerance ------------------------------------------------------

GROSS = st.integers(min_value=0, max_value=10**8)
RATE = st.one_of(st.sampled_from([0, 1, 600, 700, 770, 1900, 2000, 2500, 9999, 10000]), st.integers(0, 10000))


@settings(max_examples=500)
@given(gross=GROSS, rate=RATE)
def test_tax_of_gross_passes_klarnas_tolerance(gross, rate):
    # given a tax-inclusive line total and a tax rate in hundredths of a percent
    # when its tax is computed
    tax = tax_of_gross(gross, rate)
    # then Klarna's check accepts it, by the module's own check and by exact rational arithmetic
    assert tax_within_tolerance(gross, tax, rate)
    exact = gross - Fraction(gross * 10000, 10000 + rate)
    assert abs(tax - exact) <= Fraction(1, 2)
    assert 0 <= tax <= gross


@settings(max_examples=200)
@given(gross=GROSS, rate=RATE)
def test_tax_within_tolerance_rejects_a_tax_two_units_off(gross, rate):
    # given the right tax for a line
    tax = tax_of_gross(gross, rate)
    # when it is off by two minor units / then Klarna's check fails
    assert not tax_within_tolerance(gross, tax + 2, rate)
    assert not tax_within_tolerance(gross, tax - 2, rate)


@pytest.mark.parametrize(
    ("gross", "rate", "expected"),
    [
        pytest.param(6000, 2500, 1200, id="klarna-docs-tomatoes"),
        pytest.param(20000, 1900, 3193, id="klarna-docs-shirts"),
        pytest.param(5000, 1900, 798, id="klarna-docs-shipping"),
        pytest.param(12345, 0, 0, id="zero-rate"),
        pytest.param(0, 2500, 0, id="zero-gross"),
        pytest.param(1, 10000, 0, id="one-unit-at-100-percent-net-rounds-half-up"),
    ],
)
def test_tax_of_gross_examples(gross, rate, expected):
    # given a gross and a rate / when the tax is computed / then it matches Klarna's examples
    assert tax_of_gross(gross, rate) == expected


def test_tax_of_gross_rejects_a_negative_rate():
    # given a negative tax rate / when the tax is computed / then MoneyError
    with pytest.raises(MoneyError):
        tax_of_gross(100, -1)
