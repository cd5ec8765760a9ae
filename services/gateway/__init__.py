"""The gateway: clients list live calls, subscribe to transcripts, read history (DESIGN.md)."""
