"""Dashboard, JSON API and server-sent events."""
