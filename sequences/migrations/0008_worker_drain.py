from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sequences", "0007_worker_labels"),
    ]

    operations = [
        migrations.AddField(
            model_name="worker",
            name="draining",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="worker",
            name="drain_deadline",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="worker",
            name="drained",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
