"""The transcriber: claims calls from ``cs:{p}:jobs``, relays their audio to an ASR engine, publishes."""
