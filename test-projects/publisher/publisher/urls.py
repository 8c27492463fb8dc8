from django.contrib import admin
from django.urls import include, path

# Registers the subscription admin until pubsubpull/admin.py imports it.
import pubsubpull.delivery.admin  # noqa: F401

urlpatterns = [
    path("admin/", admin.site.urls),
    path("pubsubpull/", include("pubsubpull.urls")),
]
