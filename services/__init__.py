"""The three callscribe services: ingest, transcriber, gateway."""
