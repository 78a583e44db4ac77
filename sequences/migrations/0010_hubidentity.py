from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sequences", "0009_instance_restart_policy"),
    ]

    operations = [
        migrations.CreateModel(
            name="HubIdentity",
            fields=[
                (
                    "key",
                    models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False),
                ),
                ("hub_id", models.CharField(max_length=40, unique=True)),
                ("created", models.DateTimeField(auto_now_add=True)),
            ],
        ),
    ]
