"""The transcriber: claims calls from ``cs:jobs``, relays their audio to an ASR engine, publishes."""
