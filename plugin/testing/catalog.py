"""The sample products the demo, the bench and the tests order: Saleor's sample catalogue (orders A
and B of the captured samples), with prices as Saleor sends them (strings of the decimal amount)."""

from __future__ import annotations

from typing import Any

TEE: dict[str, Any] = {
    "name": "Monospace Tee",
    "sku": "328223583",
    "quantity": 2,
    "unit_gross": "20.00",
    "unit_net": "20.00",
    "tax_rate": "0.00",
}
SHOE: dict[str, Any] = {
    "name": "Dash Force",
    "sku": "618223584",
    "quantity": 1,
    "unit_gross": "90.00",
    "unit_net": "90.00",
    "tax_rate": "0.00",
}
