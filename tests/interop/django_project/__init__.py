"""A minimal Django project that issues djangorestframework-simplejwt tokens for the interop tests.

It only issues tokens: run ``python -m tests.interop.django_project.mint`` in a subprocess (so
Django's settings never enter the pytest process). The signing setup comes from the environment,
see :mod:`tests.interop.django_project.settings`.
"""
