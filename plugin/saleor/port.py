"""The Saleor port over :class:`SaleorClient`: every failure becomes :class:`SaleorUnavailable`."""

from __future__ import annotations

from plugin.domain.model import ShopOrder
from plugin.saleor.client import SaleorClient, SaleorError
from plugin.services.ports import SaleorUnavailable


class SaleorOrders:
    """Implements :class:`plugin.services.ports.SaleorPort`."""

    def __init__(self, client: SaleorClient) -> None:
        self.client = client

    def get_order(self, order_id: str, metadata_key: str) -> ShopOrder | None:
        try:
            return self.client.get_order(order_id, metadata_key)
        except SaleorError as exc:
            raise SaleorUnavailable(f"Saleor: {exc}") from None

    def add_note(self, order_id: str, message: str) -> None:
        try:
            self.client.add_note(order_id, message)
        except SaleorError as exc:
            raise SaleorUnavailable(f"order note not written: {exc}") from None

    def set_private_metadata(self, object_id: str, values: dict[str, str]) -> None:
        try:
            self.client.set_private_metadata(object_id, values)
        except SaleorError as exc:
            raise SaleorUnavailable(f"metadata not written: {exc}") from None
