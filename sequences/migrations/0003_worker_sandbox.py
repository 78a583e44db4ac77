from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("sequences", "0002_sequencer_actor_fields")]

    operations = [
        migrations.AddField(
            model_name="worker",
            name="sandbox",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
