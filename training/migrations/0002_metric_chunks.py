"""Store metric points in chunks of CHUNK_STEPS steps (one row per ~320 points) instead of one row each.

Existing points are copied into chunks before the point table is dropped; rollups and summaries
are unchanged (they never depended on the row layout).
"""

import django.db.models.deletion
import numpy as np
from django.db import migrations, models

CHUNK_STEPS = 320  # training.models.CHUNK_STEPS when this migration was written


def copy_points_into_chunks(apps, schema_editor):
    chunk_model = apps.get_model("training", "MetricChunk")
    conn = schema_editor.connection
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT run_id, key_id FROM training_metricpoint")
        series = cur.fetchall()
    for run_id, key_id in series:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT step, value, wall_time FROM training_metricpoint"
                " WHERE run_id = %s AND key_id = %s ORDER BY step",
                [run_id, key_id],
            )
            rows = cur.fetchall()
        steps = np.array([r[0] for r in rows], dtype="<i8")
        values = np.array([r[1] for r in rows], dtype="<f8")
        times = np.array([r[2] for r in rows], dtype="<f8")
        chunks = steps // CHUNK_STEPS
        bounds = np.flatnonzero(np.diff(chunks)) + 1
        objs = [
            chunk_model(
                run_id=run_id,
                key_id=key_id,
                chunk=int(chunks[a]),
                n=b - a,
                last_step=int(steps[b - 1]),
                steps=steps[a:b].tobytes(),
                values=values[a:b].tobytes(),
                times=times[a:b].tobytes(),
            )
            for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(steps)], strict=True)
        ]
        chunk_model.objects.bulk_create(objs, batch_size=500)


def tune_chunk_storage(apps, schema_editor):
    # A full chunk (~7.8 KB) fits one 8 KB page: keep it inline and uncompressed. Without this,
    # PostgreSQL would try to compress every row over 2 KB (float64 noise barely shrinks) and move
    # it to the TOAST table: two more heap and index writes per chunk.
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("ALTER TABLE training_metricchunk SET (toast_tuple_target = 8160)")
    for column in ("steps", '"values"', "times"):
        schema_editor.execute(f"ALTER TABLE training_metricchunk ALTER COLUMN {column} SET STORAGE EXTERNAL")


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0001_initial_runs_metrics"),
    ]

    operations = [
        migrations.CreateModel(
            name="MetricChunk",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "run", "key", "chunk", blank=True, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("chunk", models.BigIntegerField()),
                ("n", models.IntegerField()),
                ("last_step", models.BigIntegerField()),
                ("steps", models.BinaryField()),
                ("values", models.BinaryField()),
                ("times", models.BinaryField()),
                (
                    "key",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        to="training.metrickey",
                    ),
                ),
                (
                    "run",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        to="training.run",
                    ),
                ),
            ],
        ),
        migrations.RunPython(tune_chunk_storage, migrations.RunPython.noop, elidable=True),
        migrations.RunPython(copy_points_into_chunks, migrations.RunPython.noop, elidable=True),
        migrations.DeleteModel(
            name="MetricPoint",
        ),
    ]
