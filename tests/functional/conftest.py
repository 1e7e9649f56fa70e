from collections.abc import Iterator

import pytest

from plugin.settings import Settings
from tests.functional.shop import Shop


@pytest.fixture
def shop(settings: Settings) -> Iterator[Shop]:
    shop = Shop(settings)
    yield shop
    shop.close()
