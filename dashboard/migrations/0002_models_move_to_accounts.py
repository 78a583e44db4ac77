# The token and audit models moved to the accounts app. Their tables stay; accounts takes them
# over in its own state (accounts/migrations/0001) and renames them (0002).

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="ApiToken"),
                migrations.DeleteModel(name="AuditEntry"),
            ],
            database_operations=[],
        )
    ]
