"""The load benchmark's parts (``benchmarks/load.py`` is the command).

``wire`` (a cheap WebSocket client), ``calls`` (the Twilio calls), ``watchers`` (``/client``
and ``/v1/ws`` clients), ``procs`` (processes, CPU, RSS), ``fake`` (the fake Deepgram process),
``tutorial`` (the baseline's venv), ``run`` (one run), ``report`` (figures and the table).
"""
