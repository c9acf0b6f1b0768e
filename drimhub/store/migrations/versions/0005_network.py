"""The sharing node: peers, push rules, share grants, jobs, manifests; cached copies of studies and their leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def _now() -> sa.TextClause:
    return sa.func.now()


def upgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.add_column(sa.Column('origin', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('cache_complete', sa.DateTime(timezone=True), nullable=True))
        batch.create_index('ix_study_origin', ['origin'])
    op.create_table(
        'peer',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('dicomweb_url', sa.String(length=512), nullable=False),
        sa.Column('fhir_url', sa.String(length=512), nullable=True),
        sa.Column('auth', sa.String(length=16), server_default='smart-backend', nullable=False),
        sa.Column('client_id', sa.String(length=255), nullable=True),
        sa.Column('scope', sa.String(length=1024), server_default='', nullable=False),
        sa.Column('token_url', sa.String(length=512), nullable=True),
        sa.Column('allow_private', sa.Boolean(), server_default='0', nullable=False),
        sa.Column('timeout', sa.Float(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.PrimaryKeyConstraint('pk'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'push_rule',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('peer', sa.String(length=64), nullable=False),
        sa.Column('org', sa.String(length=64), nullable=True),
        sa.Column('modality', sa.String(length=16), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.PrimaryKeyConstraint('pk'),
    )
    op.create_index('ix_push_rule_peer', 'push_rule', ['peer'])
    op.create_table(
        'share',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('org', sa.String(length=64), nullable=False),
        sa.Column('grantee_org', sa.String(length=64), nullable=True),
        sa.Column('grantee_user', sa.String(length=255), nullable=True),
        sa.Column('grantee_issuer', sa.String(length=512), nullable=True),
        sa.Column('link', sa.Boolean(), server_default='0', nullable=False),
        sa.Column('permissions', sa.String(length=32), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('note', sa.String(length=1024), nullable=True),
        sa.Column('created_by', sa.String(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('token_jti', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('pk'),
        sa.UniqueConstraint('id'),
        sa.UniqueConstraint('token_jti'),
    )
    op.create_index('ix_share_study_uid', 'share', ['study_uid'])
    op.create_index('ix_share_org', 'share', ['org'])
    op.create_index('ix_share_grantee_org', 'share', ['grantee_org'])
    op.create_index('ix_share_grantee_user', 'share', ['grantee_user'])
    op.create_table(
        'job',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('org', sa.String(length=64), nullable=False),
        sa.Column('created_by', sa.String(length=255), nullable=False),
        sa.Column('peer', sa.String(length=64), nullable=True),
        sa.Column('study_uid', sa.String(length=64), nullable=True),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('total', sa.Integer(), nullable=True),
        sa.Column('done', sa.Integer(), server_default='0', nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_id', sa.String(length=32), nullable=True),
        sa.Column('next_attempt', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.PrimaryKeyConstraint('pk'),
        sa.UniqueConstraint('id'),
    )
    op.create_index('ix_job_org', 'job', ['org'])
    op.create_index('ix_job_state_lease', 'job', ['state', 'lease_until'])
    op.create_table(
        'manifest',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('sop_uid', sa.String(length=64), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('org', sa.String(length=64), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.PrimaryKeyConstraint('pk'),
        sa.UniqueConstraint('sop_uid'),
    )
    op.create_index('ix_manifest_study_uid', 'manifest', ['study_uid'])
    op.create_table(
        'cache_lease',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('origin', sa.String(length=64), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=32), nullable=False),
        sa.Column('until', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('pk'),
        sa.UniqueConstraint('origin', 'study_uid', name='uq_cache_lease_origin_study'),
    )


def downgrade() -> None:
    for table in ('cache_lease', 'manifest', 'job', 'share', 'push_rule', 'peer'):
        op.drop_table(table)
    with op.batch_alter_table('study') as batch:
        batch.drop_index('ix_study_origin')
        batch.drop_column('cache_complete')
        batch.drop_column('expires_at')
        batch.drop_column('origin')
