"""Settings of the token-issuing Django project (in-memory SQLite; signing setup from the env).

- ``INTEROP_JWT_ALGORITHM``: simplejwt's ``ALGORITHM`` (``HS256`` or ``RS256``);
- ``INTEROP_JWT_SECRET``: the shared HMAC ``SIGNING_KEY`` (HS256);
- ``INTEROP_JWT_PRIVATE_KEY_FILE`` / ``INTEROP_JWT_PUBLIC_KEY_FILE``: PEM files (RS256).

Everything else is simplejwt's default: no ``iss``, no ``aud``, no ``kid``, ``user_id`` and
``jti`` and ``token_type`` claims, 5-minute access and 1-day refresh tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = "interop-django-secret-key-not-the-jwt-signing-key-0123456789"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.interop.django_project.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Fast hashing: the project exists to issue tokens in a test, not to store real passwords.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

_ALGORITHM = os.environ.get("INTEROP_JWT_ALGORITHM", "HS256")
if _ALGORITHM.startswith("HS"):
    _SIGNING_KEY = os.environ["INTEROP_JWT_SECRET"]
    _VERIFYING_KEY = ""
else:
    _SIGNING_KEY = Path(os.environ["INTEROP_JWT_PRIVATE_KEY_FILE"]).read_text()
    _VERIFYING_KEY = Path(os.environ["INTEROP_JWT_PUBLIC_KEY_FILE"]).read_text()

SIMPLE_JWT = {
    "ALGORITHM": _ALGORITHM,
    "SIGNING_KEY": _SIGNING_KEY,
    "VERIFYING_KEY": _VERIFYING_KEY,
}
