"""Observatory's command line and end-to-end demo (the libraries are ``telemetry``,
``serving_hooks``, ``flows`` and ``dashboards``)."""

__version__ = "0.1.0"
