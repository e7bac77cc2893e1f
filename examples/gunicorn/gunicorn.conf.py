r"""Configure gunicorn for the multiprocess example shop.

Start it from the repository root with a directory of its own for the metrics files::

    mkdir -p /tmp/shop-metrics
    PROMETHEUS_MULTIPROC_DIR=/tmp/shop-metrics \
        gunicorn --config examples/gunicorn/gunicorn.conf.py app:app

``--preload``, ``--max-requests`` and a ``USR2`` upgrade work too. ``SHOP_BIND`` (default
``127.0.0.1:8000``) and ``SHOP_WORKERS`` (default 4) override the address and the number
of workers.
"""

import os
import sys
from pathlib import Path

from veza_business_metrics.gunicorn import *  # noqa: F403  the hooks

HERE = Path(__file__).resolve().parent
sys.path.extend([str(HERE), str(HERE.parent)])

bind = os.environ.get("SHOP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SHOP_WORKERS", "4"))
