"""Make the audit log append-only in the database itself: UPDATE and DELETE on audit rows are
refused by triggers, whatever code (or person with a SQL prompt) tries them.

PostgreSQL, the production database, refuses both. On SQLite (development only) row deletion
stays possible, because Django's test-database flush empties tables with DELETE there (on
PostgreSQL it uses TRUNCATE, which row triggers do not see)."""

from django.db import migrations

POSTGRES_UP = """
CREATE OR REPLACE FUNCTION annotations_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER annotations_auditevent_no_update BEFORE UPDATE OR DELETE
    ON annotations_auditevent FOR EACH ROW EXECUTE FUNCTION annotations_auditevent_append_only();
"""
POSTGRES_DOWN = """
DROP TRIGGER IF EXISTS annotations_auditevent_no_update ON annotations_auditevent;
DROP FUNCTION IF EXISTS annotations_auditevent_append_only();
"""
SQLITE_UP = [
    """CREATE TRIGGER annotations_auditevent_no_update BEFORE UPDATE ON annotations_auditevent
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS annotations_auditevent_no_update;",
]


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_UP)
    elif vendor == "sqlite":
        for statement in SQLITE_UP:
            schema_editor.execute(statement)


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_DOWN)
    elif vendor == "sqlite":
        for statement in SQLITE_DOWN:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("annotations", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
