"""What two or more callscribe services import: wire models, settings, Redis keys, audio, errors."""
