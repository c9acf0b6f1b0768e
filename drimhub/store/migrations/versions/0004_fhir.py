"""FHIR resources, their versions and search index; the FHIR Patient of each study

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 13:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'fhir_resource',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('type', sa.String(length=40), nullable=False),
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('org', sa.String(length=64), nullable=False),
        sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
        sa.Column('deleted', sa.Boolean(), server_default='0', nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=True),
        sa.Column('blob_key', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('pk'),
        sa.UniqueConstraint('type', 'id'),
    )
    op.create_index('ix_fhir_resource_org', 'fhir_resource', ['org'])
    op.create_index('ix_fhir_resource_type_updated', 'fhir_resource', ['type', 'last_updated'])
    op.create_table(
        'fhir_version',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('resource_pk', sa.Integer(), sa.ForeignKey('fhir_resource.pk'), nullable=False),
        sa.Column('type', sa.String(length=40), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
        sa.Column('method', sa.String(length=8), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=True),
        sa.Column('blob_key', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('pk'),
        sa.UniqueConstraint('resource_pk', 'version'),
    )
    op.create_index('ix_fhir_version_type_updated', 'fhir_version', ['type', 'last_updated'])
    op.create_index('ix_fhir_version_blob_key', 'fhir_version', ['blob_key'])
    op.create_table(
        'fhir_index',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('resource_pk', sa.Integer(), sa.ForeignKey('fhir_resource.pk', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('type', sa.String(length=40), nullable=False),
        sa.Column('param', sa.String(length=64), nullable=False),
        sa.Column('system', sa.String(length=255), nullable=True),
        sa.Column('value', sa.String(length=255), nullable=True),
        sa.Column('exact', sa.String(length=255), nullable=True),
        sa.Column('low', sa.DateTime(timezone=True), nullable=True),
        sa.Column('high', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ref_type', sa.String(length=40), nullable=True),
        sa.Column('ref_id', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('pk'),
    )
    op.create_index('ix_fhir_index_resource_pk', 'fhir_index', ['resource_pk'])
    op.create_index('ix_fhir_index_value', 'fhir_index', ['type', 'param', 'value'])
    op.create_index('ix_fhir_index_ref', 'fhir_index', ['param', 'ref_type', 'ref_id'])
    op.create_index('ix_fhir_index_date', 'fhir_index', ['type', 'param', 'low'])
    with op.batch_alter_table('study') as batch:
        batch.add_column(sa.Column('patient_ref', sa.String(length=64), nullable=True))
        batch.create_index('ix_study_patient_ref', ['patient_ref'])


def downgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.drop_index('ix_study_patient_ref')
        batch.drop_column('patient_ref')
    op.drop_table('fhir_index')
    op.drop_table('fhir_version')
    op.drop_table('fhir_resource')
