from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("rounds", "0004_privacy"),
    ]

    operations = [
        migrations.AddField(
            model_name="round",
            name="selection",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="who is invited at open: {} = all active merchants; else fraction, "
                "over_selection and/or a cohort (rounds.services.selection)",
            ),
        ),
        migrations.AddField(
            model_name="round",
            name="series",
            field=models.UUIDField(
                blank=True,
                db_index=True,
                help_text="rounds scheduled together as a series",
                null=True,
            ),
        ),
    ]
