"""Policy as code: the document, its validation, and the decisions every service takes from it.

Pure: no I/O here. Storage in JetStream KV and distribution live in libs/runtime/policy_store.py.
"""
