"""pubsubpull's HTTP API. In the project's urls.py::

path("pubsubpull/", include("pubsubpull.urls")),
"""

from django.urls import path, register_converter

from pubsubpull.publisher.api import health, subscriptions, views


class PrimaryKeyConverter:
    """Any primary key text, slashes and newlines included (URLs quote them)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(PrimaryKeyConverter, "pubsubpull_pk")

app_name = "pubsubpull"

urlpatterns = [
    path("", views.service, name="service"),
    path("openapi.json", views.openapi_document, name="openapi"),
    path("changes/", views.changes, name="changes"),
    path("models/<str:model>/instances/", views.instances, name="instances"),
    path("models/<str:model>/instances/<pubsubpull_pk:pk>/", views.instance, name="instance"),
    path("subscriptions/", subscriptions.collection, name="subscriptions"),
    path("health/", health.health, name="health"),
    path("metrics", health.metrics, name="metrics"),
    path("subscriptions/<str:name>/", subscriptions.subscription, name="subscription"),
    path(
        "subscriptions/<str:name>/parked/",
        subscriptions.parked_collection,
        name="subscription-parked",
    ),
    path(
        "subscriptions/<str:name>/parked/<str:change_id>/",
        subscriptions.parked_change,
        name="subscription-parked-change",
    ),
]
