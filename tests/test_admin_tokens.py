"""An operator creates a service token in the admin, sees it once, and it works."""

import re

import pytest
from django.contrib.auth.models import User

from pubsubpull.models import ServiceToken

pytestmark = pytest.mark.django_db


def test_a_token_made_in_the_admin_is_shown_once_and_reads_the_feed(client):
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    response = client.post(
        "/admin/pubsubpull/servicetoken/add/",
        {"name": "billing", "scope": '["customers.customer"]', "is_active": "on"},
        follow=True,
    )
    assert response.status_code == 200
    (message,) = [str(m) for m in response.context["messages"] if "copy it now" in str(m)]
    token = re.search(r"is (\S+) — copy it now", message).group(1)
    stored = ServiceToken.objects.get(name="billing")
    assert token not in stored.key_hash and stored.prefix == token[:12]

    page = client.get("/admin/pubsubpull/servicetoken/")
    assert token not in page.content.decode()

    client.logout()
    feed = client.get(
        "/pubsubpull/changes/?models=customers.customer",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert feed.status_code == 200
    denied = client.get(
        "/pubsubpull/changes/?models=customers.country",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert denied.status_code == 403

    client.force_login(admin)
    client.post(
        "/admin/pubsubpull/servicetoken/",
        {"action": "revoke", "_selected_action": [stored.pk]},
    )
    client.logout()
    revoked = client.get(
        "/pubsubpull/changes/?models=customers.customer",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert revoked.status_code == 401
