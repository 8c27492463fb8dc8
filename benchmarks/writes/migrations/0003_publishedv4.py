# A plain table: write_overhead.py installs capture version 4 on it after
# migrate (no Publish operation, which would install version 3).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("bench_writes", "0002_designs"),
    ]

    operations = [
        migrations.CreateModel(
            name="PublishedV4",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=200)),
                ("email", models.EmailField(blank=True, max_length=254)),
                ("country", models.CharField(blank=True, max_length=2)),
                ("newsletter", models.BooleanField(default=False)),
                ("score", models.IntegerField(default=0)),
                ("created", models.DateTimeField()),
                ("updated", models.DateTimeField()),
            ],
            options={
                "abstract": False,
            },
        ),
    ]
