from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("rlhf", "0007_reward_run_shapes_preset"),
    ]

    operations = [
        migrations.AddField(
            model_name="preferenceexport",
            name="storage_url",
            field=models.CharField(blank=True, default="", max_length=500),
        ),
    ]
