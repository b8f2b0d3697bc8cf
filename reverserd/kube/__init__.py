"""Talking to the Kubernetes API server: connection, discovery, plain-JSON requests and watches.

Infrastructure only: nothing here knows about journals, targets or Git. Bodies are plain dicts
parsed from JSON; the client library's model classes are never built.
"""
