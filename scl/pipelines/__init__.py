"""End-to-end experiments: classification (``scl demo``)."""
