import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from plugin.db import Database, NotMigratedError
from plugin.db.models import Base


def test_head_matches_the_models(database_url: str) -> None:
    # given a database upgraded to head (the fixture) / when autogenerate compares / then no difference
    db = Database(database_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    db.dispose()
    assert diff == []


def test_unmigrated_database_is_refused_with_a_clear_message(tmp_path) -> None:  # type: ignore[no-untyped-def]  # tmp_path is pytest's fixture
    db = Database(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with pytest.raises(NotMigratedError, match="klarna-om db upgrade"):
        db.check_migrated()
    db.upgrade()
    db.check_migrated()
