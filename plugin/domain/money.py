"""Money: integer minor units, exact allocation, Klarna's tax rules. Standard library only.

Saleor sends amounts as JSON floats; they enter through :func:`to_minor` via ``Decimal(str(x))``.
No float arithmetic happens anywhere else.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# ISO 4217 exponents that differ from 2. Everything else has two decimals.
_EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip


class MoneyError(ValueError):
    """An amount that cannot be represented exactly in minor units."""


def exponent(currency: str) -> int:
    """The number of decimals of ``currency`` (JPY 0, EUR 2, KWD 3)."""
    if len(currency) != 3 or not currency.isalpha():
        raise MoneyError(f"not an ISO 4217 currency code: {currency!r}")
    return _EXPONENTS.get(currency.upper(), 2)


def to_minor(amount: float | int | str | Decimal, currency: str) -> int:
    """Convert a major-unit amount (as Saleor sends it) to integer minor units, exactly."""
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    except InvalidOperation:
        raise MoneyError(f"not a number: {amount!r}") from None
    if not value.is_finite():
        raise MoneyError(f"not a finite amount: {amount!r}")
    scaled = value.scaleb(exponent(currency))
    minor = scaled.to_integral_value(rounding=ROUND_HALF_UP)
    if abs(scaled - minor) > Decimal("1e-6"):
        # More precision than the currency has (beyond float noise): Saleor quantizes, so this
        # is a bug upstream and no amount is guessed.
        raise MoneyError(f"{amount!r} has more decimals than {currency} allows")
    return int(minor)


def format_minor(amount: int, currency: str) -> str:
    """``12345, "EUR"`` -> ``"123.45 EUR"``."""
    exp = exponent(currency)
    return f"{Decimal(amount).scaleb(-exp):.{exp}f} {currency.upper()}"


def tax_rate_basis_points(rate: float | str | Decimal) -> int:
    """Saleor's fractional tax rate (``0.23``) as Klarna's ``tax_rate`` (``2300``)."""
    value = Decimal(str(rate)) * 10000
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def tax_of_gross(gross: int, rate_bp: int) -> int:
    """The tax inside a tax-inclusive ``gross`` at ``rate_bp``, as Klarna computes it.

    Klarna accepts a line when ``total_tax_amount`` is within 1 minor unit of
    ``total_amount - total_amount * 10000 / (10000 + tax_rate)``; rounding half up keeps it within 1/2.
    """
    if rate_bp < 0:
        raise MoneyError("negative tax rate")
    if rate_bp == 0 or gross == 0:
        return 0
    net = (Decimal(gross) * 10000 / (10000 + rate_bp)).to_integral_value(rounding=ROUND_HALF_UP)
    return gross - int(net)


def tax_within_tolerance(total: int, tax: int, rate_bp: int) -> bool:
    """Klarna's per-line check (±1 minor unit)."""
    expected = Decimal(total) - Decimal(total) * 10000 / (10000 + rate_bp)
    return abs(Decimal(tax) - expected) <= 1


def share(total: int, quantity: int, before: int, taken: int) -> int:
    """The part of ``total`` (for ``quantity`` units) that belongs to units ``before .. before+taken``.

    Cumulative floor allocation: the shares of any partition of the units sum to ``total`` exactly.
    """
    if quantity <= 0:
        return 0
    if not 0 <= before <= before + taken <= quantity:
        raise MoneyError("units out of range")
    return total * (before + taken) // quantity - total * before // quantity
