"""The WSGI application that uWSGI serves: ``project.wsgi_uwsgi:application``.

It is ``project/wsgi.py``'s, after the uWSGI example's ``metrics_hooks``, which
``uwsgi.ini`` puts on the import path: the hooks run in uWSGI's master, which loads this
module before it forks the workers.
"""

from __future__ import annotations

import metrics_hooks  # noqa: F401  the cold start and each new worker's merge, first

from project.wsgi import application

__all__ = ["application"]
