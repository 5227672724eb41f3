# One image for the control plane (`meshd serve`), the sidecar (`meshd agent`, which runs Envoy) and the
# sidecar's init container (`meshd iptables`, run as root with NET_ADMIN by the injector).
#   docker build -t ghcr.io/meshd/meshd:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY deploy/docker/install.sh /src/deploy/docker/install.sh
RUN sh /src/deploy/docker/install.sh /src /opt/meshd

FROM ${PYTHON_IMAGE}
# iptables (nft and legacy backends) for `meshd iptables` in the init container
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1337 istio-proxy \
 && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin istio-proxy
# same base image in both stages, so the virtualenv's interpreter link stays valid
COPY --from=build /opt/meshd /opt/meshd
ENV PATH=/opt/meshd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1337:1337
WORKDIR /tmp
EXPOSE 15010 15012 15014 15017
ENTRYPOINT ["meshd"]
CMD ["serve"]
