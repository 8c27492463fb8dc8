"""pubsubpull's HTTP API. In the project's urls.py::

path("pubsubpull/", include("pubsubpull.urls")),
"""

from django.urls import path

from .api import subscriptions, views

app_name = "pubsubpull"

urlpatterns = [
    path("", views.service, name="service"),
    path("openapi.json", views.openapi_document, name="openapi"),
    path("changes/", views.changes, name="changes"),
    path("models/<str:model>/instances/", views.instances, name="instances"),
    path("models/<str:model>/instances/<path:pk>/", views.instance, name="instance"),
    path("subscriptions/", subscriptions.collection, name="subscriptions"),
    path("subscriptions/<str:name>/", subscriptions.subscription, name="subscription"),
]
