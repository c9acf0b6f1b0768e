"""non-cascading foreign keys of series and instance

A DELETE removed a series (or study) left empty and the database cascaded the delete to its
children; a child inserted meanwhile by a concurrent STOW, not yet visible to the DELETE, went
with it. The foreign keys no longer cascade: children are deleted explicitly, and a parent
that still has children cannot be deleted (:func:`drimhub.store.retrieve.delete_instances`).

The constraints of 0001 have no explicit name: PostgreSQL named them ``<table>_<column>_fkey``;
SQLite has none, the batch copy finds them through a naming convention.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:59:58.469056
"""

from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

#: Names given to unnamed constraints in SQLite batch mode (reflected without a name).
_CONVENTION = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}
_INSTANCE_FK = "instance_series_pk_fkey"
_SERIES_FK = "series_study_pk_fkey"


def _recreate(ondelete: str | None) -> None:
    """Replace both foreign keys by ones with ``ondelete``.

    On SQLite batch mode copies a table, drops the old one and renames the copy; dropping
    ``series`` deletes its rows first, which a foreign key of ``instance`` would cascade to or
    refuse. So ``instance`` loses its foreign key first and gets the new one back last.
    """
    with op.batch_alter_table("instance", naming_convention=_CONVENTION) as batch_op:
        batch_op.drop_constraint(_INSTANCE_FK, type_="foreignkey")
    with op.batch_alter_table("series", naming_convention=_CONVENTION) as batch_op:
        batch_op.drop_constraint(_SERIES_FK, type_="foreignkey")
        batch_op.create_foreign_key(_SERIES_FK, "study", ["study_pk"], ["pk"], ondelete=ondelete)
    with op.batch_alter_table("instance", naming_convention=_CONVENTION) as batch_op:
        batch_op.create_foreign_key(_INSTANCE_FK, "series", ["series_pk"], ["pk"], ondelete=ondelete)


def upgrade() -> None:
    _recreate(None)


def downgrade() -> None:
    _recreate("CASCADE")
