# The kfn platform image: the operator (with its autoscaler) and the gateway in ONE image, run as
# two commands, `kfn operator` and `kfn gateway`. They share the model, the names and the scaling
# code, always ship at the same version, and a single image is one build, one tag and one
# `kind load` instead of two. Function code never runs here: it runs in the runtime images
# (runtime-images/python/Dockerfile).
#
#   docker build -t ghcr.io/kfn-dev/kfn:0.1.0 .   (official python:3.12-slim base)
#   docker build --build-arg BASE_IMAGE=python:3.13-slim -t ghcr.io/kfn-dev/kfn:0.1.0 .
ARG BASE_IMAGE=python:3.12-slim

# Build stage: install kfn with its Kubernetes extra into a virtualenv, which is all the final
# image takes from here (no pip cache, no build tree, no setuptools).
FROM ${BASE_IMAGE} AS build
# One COPY of the whole context: .dockerignore admits only the package sources. Few steps keep
# layer-by-layer builds (buildah's vfs driver in CI copies the whole tree per step) fast.
COPY . /src/
RUN python3 -m venv --without-pip /opt/kfn \
    && python3 -m pip --python /opt/kfn/bin/python install --no-cache-dir --no-compile \
        --disable-pip-version-check '/src[kubernetes]' \
    && /opt/kfn/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/kfn/lib

FROM ${BASE_IMAGE}
COPY --from=build /opt/kfn /opt/kfn
# A passwd entry for the user the image runs as: libraries that ask who they run as
# (getpass.getuser(), as kopf does for its identity) fail for a uid the system does not know.
RUN echo 'kfn:x:65532:65532:kfn:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'kfn:x:65532:' >> /etc/group
# Bytecode is compiled at build time above, as unchecked-hash .pyc files that stay valid whatever
# file times the copy leaves: the root filesystem is read-only in the cluster.
ENV PATH=/opt/kfn/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A numeric user, so Kubernetes can check runAsNonRoot without looking up /etc/passwd.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["kfn"]
CMD ["--help"]
