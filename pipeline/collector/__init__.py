"""The collector: the ingest endpoint browsers and trackers send events to.

``create_app`` (pipeline.collector.app) builds the Starlette app, ``serve``
(pipeline.collector.server) runs it on uvicorn, ``snippet``
(pipeline.collector.snippet) gives the ``<script>`` tag for a site, and
``BatchingProducer`` (pipeline.collector.producer) writes what it accepts to
``pixel-events`` in partition-batched records. The wire protocols are in
PROTOCOL.md beside this file.
"""

from .app import create_app
from .producer import BatchingProducer, BrokerUnavailable, PayloadSink
from .server import serve
from .snippet import collector_url, demo_page, snippet

__all__ = ["create_app", "serve", "snippet", "demo_page", "collector_url", "BatchingProducer", "BrokerUnavailable",
           "PayloadSink"]
