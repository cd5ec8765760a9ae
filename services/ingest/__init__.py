"""Ingest: Twilio Media Streams WebSocket -> mixed stereo frames in Redis Streams."""
