# ftpsgate container image.
#
#   docker build -t ftpsgate .                       # or: buildah bud --format docker -t ftpsgate .
#   docker run -d --name ftpsgate \
#       -p 21:2121 -p 990:2990 -p 61000-61099:61000-61099 \
#       -v /srv/ftpsgate:/etc/ftpsgate:ro ftpsgate
#
# Two stages: the program is built with meson on Debian, then copied into a
# slim Debian with only the runtime libraries (libssl3, libuv1, libinih1) and
# CA certificates (for checking certificate chains). BASE swaps the Debian
# image of both stages, e.g. for a mirror or an offline base made with
# debootstrap (scripts/container-test does that): --build-arg BASE=...
#
# No root at all: ftpsgate runs as uid/gid 10001 ("ftpsgate") and binds high
# ports (2121 explicit FTPS, 2990 implicit FTPS, 61000-61099 passive, 9120
# metrics). Publish them as 21/990 on the host (-p 21:2121 -p 990:2990, or a
# Kubernetes Service port/targetPort); the passive range must be published
# 1:1 (same numbers outside and inside), because the port number travels in
# the 227/229 reply. No capability is needed, so none is granted
# (CAP_NET_BIND_SERVICE would be the alternative for binding 21/990 in the
# container; this image does not use it).
#
# Configuration: /etc/ftpsgate/ftpsgate.ini (a container example is built in,
# config/container/ftpsgate.ini); mount your own file, or the directory with
# the INI and the certificates. Files must be readable by uid 10001.
# Stopping: SIGTERM lets running sessions finish for shutdown_grace seconds
# (30 by default), so give the runtime at least that much: docker stop -t 40,
# Kubernetes terminationGracePeriodSeconds: 45 (config/k8s waits 10 s in
# preStop first).

ARG BASE=debian:bookworm-slim

# ---- build ----------------------------------------------------------------
FROM ${BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        meson ninja-build pkg-config gcc libc6-dev \
        libssl-dev libuv1-dev libinih-dev libcmocka-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads (tests/ because meson.build configures the unit
# tests and fuzz replays too; only the program is compiled).
COPY meson.build meson_options.txt ./
COPY include/ include/
COPY proxy/ proxy/
COPY tests/ tests/
RUN meson setup /build \
 && meson compile -C /build ftpsgate \
 && strip /build/ftpsgate \
 && /build/ftpsgate --version

# ---- run --------------------------------------------------------------------
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libssl3 libuv1 libinih1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ftpsgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ftpsgate
COPY --from=build /build/ftpsgate /usr/local/bin/ftpsgate
COPY config/container/healthcheck /usr/local/bin/ftpsgate-healthcheck
COPY config/container/ftpsgate.ini /etc/ftpsgate/ftpsgate.ini
COPY config/ftpsgate.ini /usr/share/doc/ftpsgate/ftpsgate.ini.sample
RUN chmod 0755 /usr/local/bin/ftpsgate /usr/local/bin/ftpsgate-healthcheck \
 && chmod 0644 /etc/ftpsgate/ftpsgate.ini \
 && /usr/local/bin/ftpsgate --version

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /
EXPOSE 2121 2990 61000-61099 9120

# Liveness: bash's /dev/tcp, nothing else to install. With metrics_listen
# set it asks GET /metrics for a 200; otherwise it expects the 220 greeting
# on the first explicit listener (sending a PROXY header first when
# proxy_protocol is on: 127.0.0.1 must then be in proxy_protocol_from). See
# config/container/healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/ftpsgate-healthcheck"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ftpsgate"]
CMD ["-c", "/etc/ftpsgate/ftpsgate.ini"]
