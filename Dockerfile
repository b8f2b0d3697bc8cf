# syntax=docker/dockerfile:1
# reverserd container image: docker build -t REGISTRY/reverserd:0.1.0 .
#
# Stages: "sops" builds the sops binary from its Go module (pinned by module version; go install
# verifies the module against the Go checksum database, so there is no checksum to maintain
# here); "builder" installs reverserd's dependencies from packaging/requirements.lock (every
# version pinned with its hashes, pip refuses anything else) and then reverserd itself into a
# virtual environment; the final stage holds that environment, sops and git (reverserd runs
# `git gc` to maintain its clones) on python:3.11-slim, and runs as the non-root user 65532.
#
# Base images: a tag can be moved to other content, a digest cannot. Pin both images by digest
# for a release build, with the digest of the image you reviewed:
#   docker buildx imagetools inspect python:3.11-slim    # prints "Digest: sha256:..."
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> \
#                --build-arg GO_IMAGE=golang:1.26@sha256:<digest> -t REGISTRY/reverserd:TAG .
# The defaults below are tags only: this repository is built and tested where no registry is
# reachable, so no digest here could have been looked up and checked, and a digest nobody
# checked would only look like a pin.

# The builder and the final stage must share one Python image: the venv links to its python.
ARG PYTHON_IMAGE=python:3.11-slim
ARG GO_IMAGE=golang:1.26

FROM ${GO_IMAGE} AS sops
ARG SOPS_VERSION=v3.13.3
ARG AGE_VERSION=v1.3.2
# age-keygen derives recipients from age identities and generates keys (generateWhenMissing).
RUN CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN=/out go install -trimpath -ldflags="-s -w" \
      github.com/getsops/sops/v3/cmd/sops@${SOPS_VERSION} \
      filippo.io/age/cmd/age-keygen@${AGE_VERSION} \
 && /out/sops --version --disable-version-check

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/reverserd
WORKDIR /src
COPY packaging/requirements.lock ./
RUN /opt/reverserd/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY reverserd ./reverserd
COPY migrations ./migrations
# A regular (not editable) install: the package into site-packages, the migrations into
# /opt/reverserd/share/reverserd/migrations, where an installed reverserd looks for them.
# --no-deps and --no-build-isolation: everything it needs, setuptools included, came from the
# lock file above; nothing unpinned is downloaded.
RUN /opt/reverserd/bin/pip install --no-deps --no-build-isolation . \
 && test -f /opt/reverserd/share/reverserd/migrations/0001_journal.sql

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/reverserd
COPY --from=builder /opt/reverserd /opt/reverserd
COPY --from=sops /out/sops /out/age-keygen /usr/local/bin/
# HOME=/tmp: git and libgit2 read their configuration there, and with a read-only root file
# system /tmp is the writable volume. Bytecode was compiled at install time.
ENV PATH=/opt/reverserd/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REVERSERD_STATE_DIR=/var/lib/reverserd
USER 65532:65532
WORKDIR /var/lib/reverserd
EXPOSE 8080
ENTRYPOINT ["reverserd"]
CMD ["run"]
