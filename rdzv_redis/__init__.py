"""rdzv Redis plug-in (``pip install 'rdzv[redis]'``)."""
