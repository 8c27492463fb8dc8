"""URLs of benchmarks/longpoll.py's service: pubsubpull, and how many polls wait."""

from django.http import JsonResponse
from django.urls import include, path


async def waiting(request):
    """How many long polls wait in this server process."""
    from pubsubpull.publisher import listener

    return JsonResponse({"waiting": listener.waiting()})


urlpatterns = [
    path("_bench/waiting", waiting),
    path("pubsubpull/", include("pubsubpull.urls")),
]
