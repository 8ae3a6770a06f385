"""Issue one simplejwt token pair through the real login endpoint and print it as JSON.

Run in a subprocess, with ``DJANGO_SETTINGS_MODULE=tests.interop.django_project.settings``
and the signing environment described in the settings module::

    {"access": "...", "refresh": "...", "user_id": "1"}
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.interop.django_project.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0, interactive=False)
    user = get_user_model().objects.create_user(username="alice", password="correct horse battery")
    response = Client().post(
        "/api/token/",
        data=json.dumps({"username": "alice", "password": "correct horse battery"}),
        content_type="application/json",
    )
    if response.status_code != 200:
        print(f"token endpoint answered {response.status_code}: {response.content!r}", file=sys.stderr)
        return 1
    pair = response.json()
    print(json.dumps({"access": pair["access"], "refresh": pair["refresh"], "user_id": str(user.pk)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
