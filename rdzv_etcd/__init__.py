"""rdzv etcd plug-ins (``pip install 'rdzv[etcd]'``)."""
