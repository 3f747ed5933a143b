"""Integrations with optional dependencies; each module needs its extra, e.g. rdfunnel[fastapi]."""
