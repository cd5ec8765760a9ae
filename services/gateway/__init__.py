"""The gateway: clients list live calls, subscribe to transcripts, read history.

The client interfaces are specified in docs/protocol.md, "Gateway client interfaces".
"""
