# The same environment as `make setup` on Debian 12: the Makefile is the only list of
# dependencies. Build: docker build -t mlcu .   Run the demo: docker run --rm mlcu
FROM debian:12
RUN apt-get update && apt-get install -y --no-install-recommends make python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/mlcu
COPY . .
RUN make setup && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/mlcu/.venv/bin:$PATH \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
CMD ["make", "demo"]
