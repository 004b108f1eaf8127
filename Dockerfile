# Crypto Sentinel images. Targets:
#   app   (default) - the pipeline and API: slim Python, non-root, ~no build tools at run time
#   spark           - app + a Java runtime, pyspark and the Spark job's jars (Kafka source)
# Build: docker build -t crypto-sentinel .            (or --target spark -t crypto-sentinel-spark)

# The compiled decoder (native/, Rust): one abi3 wheel for CPython >= 3.11, built in Rust's
# own image so the app image carries no compiler.
FROM rust:1-slim-bookworm AS native
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/maturin \
 && /opt/maturin/bin/pip install "maturin>=1.5,<2"
WORKDIR /native
COPY native ./
RUN /opt/maturin/bin/maturin build --release --out /wheels

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY bench ./bench
COPY --from=native /wheels /wheels
RUN python -m venv /opt/sentinel \
 && /opt/sentinel/bin/pip install . /wheels/*.whl

FROM python:3.11-slim AS app
ENV PATH=/opt/sentinel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SENTINEL_DATA_DIR=/data \
    SENTINEL_HOST=0.0.0.0
RUN useradd --system --uid 10001 --home-dir /data --create-home sentinel
COPY --from=build /opt/sentinel /opt/sentinel
USER sentinel
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["sentinel", "up"]

FROM build AS spark-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends maven openjdk-17-jre-headless \
 && /opt/sentinel/bin/pip install ".[spark]" \
 && SENTINEL_SPARK_JARS_CACHE=/opt/sentinel-jars /opt/sentinel/bin/sentinel spark install

FROM app AS spark
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=spark-build /opt/sentinel /opt/sentinel
COPY --from=spark-build /opt/sentinel-jars /opt/sentinel-jars
ENV SENTINEL_SPARK_JARS_CACHE=/opt/sentinel-jars
USER sentinel
HEALTHCHECK NONE
