"""Frozen means frozen, in the database itself: a dataset snapshot and its cases can never be
updated, and a model version's weights, configuration, threshold, metrics and checksum can
never change (only its state and the dates of promotion and retirement do). Triggers refuse
the UPDATE whatever code (or person with a SQL prompt) tries it.

`BEFORE UPDATE OF <columns>` fires when a statement sets any of those columns, changed or not,
on both PostgreSQL and SQLite, so services must save model versions with `update_fields`.
On PostgreSQL deleting them is refused too; on SQLite (development only) row deletion stays
possible, because Django's test-database flush empties tables with DELETE there."""

from django.db import migrations

SNAPSHOT_TABLES = ("training_datasetsnapshot", "training_snapshotcase")
MODEL_COLUMNS = ("number", "run_id", "snapshot_id", "arch", "preset", "config", "threshold",
                 "metrics", "weights", "weights_format", "checksum", "code_version",
                 "created_at")
COLUMNS = ", ".join(MODEL_COLUMNS)

POSTGRES_UP = [
    """CREATE OR REPLACE FUNCTION training_refuse_change() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME;
    END;
    $$ LANGUAGE plpgsql;""",
    *[f"""CREATE TRIGGER {t}_frozen BEFORE UPDATE OR DELETE ON {t}
          FOR EACH ROW EXECUTE FUNCTION training_refuse_change();""" for t in SNAPSHOT_TABLES],
    f"""CREATE TRIGGER training_modelversion_frozen BEFORE UPDATE OF {COLUMNS}
        ON training_modelversion FOR EACH ROW EXECUTE FUNCTION training_refuse_change();""",
    """CREATE TRIGGER training_modelversion_kept BEFORE DELETE ON training_modelversion
        FOR EACH ROW EXECUTE FUNCTION training_refuse_change();""",
]
POSTGRES_DOWN = [
    *[f"DROP TRIGGER IF EXISTS {t}_frozen ON {t};" for t in SNAPSHOT_TABLES],
    "DROP TRIGGER IF EXISTS training_modelversion_frozen ON training_modelversion;",
    "DROP TRIGGER IF EXISTS training_modelversion_kept ON training_modelversion;",
    "DROP FUNCTION IF EXISTS training_refuse_change();",
]
SQLITE_UP = [
    *[f"""CREATE TRIGGER {t}_frozen BEFORE UPDATE ON {t}
          BEGIN SELECT RAISE(ABORT, '{t} rows are immutable'); END;""" for t in SNAPSHOT_TABLES],
    f"""CREATE TRIGGER training_modelversion_frozen BEFORE UPDATE OF {COLUMNS}
        ON training_modelversion
        BEGIN SELECT RAISE(ABORT, 'training_modelversion rows are immutable'); END;""",
]
SQLITE_DOWN = [
    *[f"DROP TRIGGER IF EXISTS {t}_frozen;" for t in SNAPSHOT_TABLES],
    "DROP TRIGGER IF EXISTS training_modelversion_frozen;",
]


def forwards(apps, schema_editor):
    statements = {"postgresql": POSTGRES_UP, "sqlite": SQLITE_UP}.get(
        schema_editor.connection.vendor, [])
    for statement in statements:
        # params=None: the PL/pgSQL '%' is a format placeholder of RAISE, not of the driver.
        schema_editor.execute(statement, params=None)


def backwards(apps, schema_editor):
    statements = {"postgresql": POSTGRES_DOWN, "sqlite": SQLITE_DOWN}.get(
        schema_editor.connection.vendor, [])
    for statement in statements:
        # params=None: the PL/pgSQL '%' is a format placeholder of RAISE, not of the driver.
        schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("training", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
