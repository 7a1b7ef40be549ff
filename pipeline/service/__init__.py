"""The HTTP service for helpdesk integrations."""
