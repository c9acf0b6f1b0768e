"""Durable background jobs (huey): pushes to peers, scheduled purges."""
