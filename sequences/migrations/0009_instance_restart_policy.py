from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sequences", "0008_worker_drain"),
    ]

    operations = [
        migrations.AddField(
            model_name="instance",
            name="restart_policy",
            field=models.CharField(db_index=True, default="never", max_length=12),
        ),
        migrations.AddField(
            model_name="instance",
            name="restart_max",
            field=models.IntegerField(default=0),
        ),
        migrations.AddField(
            model_name="instance",
            name="restart_backoff",
            field=models.FloatField(default=0),
        ),
        migrations.AddField(
            model_name="instance",
            name="restart_count",
            field=models.IntegerField(default=0),
        ),
        migrations.AddField(
            model_name="sequencecomponent",
            name="reason",
            field=models.CharField(blank=True, max_length=500),
        ),
    ]
