"""callscribe: the `callscribe` command (services, demo, simulator, terminal watcher)."""
