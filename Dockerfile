# peerdistd container image: build a wheel, then install it into a clean runtime image.
#   docker build -t peerdistd .
#   docker run -d --name peerdistd --network host \
#     -v peerdistd-state:/var/lib/peerdistd -v peerdistd-cache:/var/cache/peerdistd peerdistd
# --network host: MS-PCCRD discovery is link-local multicast (239.255.255.250 / ff02::c,
# UDP 3702) and peers must reach port 80 on the host's own address. See docs/deployment.md.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY peerdistd ./peerdistd
# The project's wheel and the wheels of all its dependencies, for an offline install below.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ARG UID=10001
RUN groupadd --system --gid "${UID}" peerdistd \
    && useradd --system --uid "${UID}" --gid peerdistd --no-create-home \
        --home-dir /var/lib/peerdistd --shell /usr/sbin/nologin peerdistd \
    && install -d -o peerdistd -g peerdistd -m 0700 /var/lib/peerdistd /var/cache/peerdistd \
    && install -d -o peerdistd -g peerdistd -m 0700 /run/peerdistd
# Install offline from the wheels. Peers connect to port 80 (Windows cannot be told otherwise):
# let the non-root daemon bind it with the file capability cap_net_bind_service+ep on the
# interpreter (the raw vfs_cap_data, revision 2, that `setcap` would write; no libcap needed).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/peerdistd-*.whl \
    && python3 -c "import os, struct; os.setxattr(os.path.realpath('/usr/local/bin/python3'), 'security.capability', struct.pack('<5I', 0x02000001, 0x400, 0, 0, 0))"

# Where peerdistd (config.default_paths) and the peerdist client look, as under systemd.
ENV STATE_DIRECTORY=/var/lib/peerdistd \
    CACHE_DIRECTORY=/var/cache/peerdistd \
    RUNTIME_DIRECTORY=/run/peerdistd \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/peerdistd", "/var/cache/peerdistd"]
# 80/tcp: MS-PCCRR retrieval; 3702/udp: MS-PCCRD discovery; 9595/tcp: metrics (loopback only
# unless PEERDISTD_METRICS_LISTEN and PEERDISTD_METRICS_ALLOW_REMOTE=true say otherwise).
EXPOSE 80/tcp 3702/udp 9595/tcp
USER ${UID}:${UID}
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["peerdist", "status"]
ENTRYPOINT ["peerdistd", "serve"]
