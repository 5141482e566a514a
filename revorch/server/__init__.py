"""Revorch's own HTTP service (``revorch serve``): the webhook receivers, and the pages other
parts add (docs/sources/webhooks.md)."""
