FROM python:3.11-slim-bookworm

WORKDIR /app

# The one-file export draws Chinese names with this font (recorder/export.py);
# gcc compiles the send path hub/media/_fastsend.c at install (HUB_FORWARD=c).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-wqy-microhei gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Metadata first so the layer order matches the install inputs.
COPY pyproject.toml setup.py README.md ./
# One COPY per package: a multi-source COPY would flatten the directories' contents into /app.
COPY hub ./hub
COPY signaling ./signaling
COPY recorder ./recorder
COPY client ./client
COPY web ./web

RUN pip install --no-cache-dir .

EXPOSE 8080

CMD ["python", "-m", "hub", "serve", "--host", "0.0.0.0"]
