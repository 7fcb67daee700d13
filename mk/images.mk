# Container images: the platform image (root Dockerfile: `kfn operator` and `kfn gateway`), a
# runtime image per Python version (runtime-images/python/Dockerfile) and per Node.js major
# (runtime-images/nodejs/Dockerfile: Node.js and npm from the npm registry).
#   make images          build and smoke-test every image with buildah, no Docker needed (CI)
#   make images-docker   build them with Docker on the official python images (for kind)
#   make node22          Node.js 22 from the npm registry into .cache/node/22, for `kfn local` (also node20)
KFN_VERSION     ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REGISTRY  ?= ghcr.io/kfn-dev
PLATFORM_IMAGE  ?= $(IMAGE_REGISTRY)/kfn:$(KFN_VERSION)
RUNTIME_REPO    ?= $(IMAGE_REGISTRY)/runtime-python
PYTHON_VERSIONS ?= 3.11 3.12 3.13
RUNTIME_IMAGES  := $(foreach v,$(PYTHON_VERSIONS),$(RUNTIME_REPO):$(v))
DOCKER          ?= docker
# Node.js runtime images, and the Node.js builds `kfn local` can use (`make node22`): npm registry versions.
NODEJS_REPO      ?= $(IMAGE_REGISTRY)/runtime-nodejs
NODEJS20_VERSION ?= 20.20.2
NODEJS22_VERSION ?= 22.23.5
NPM_VERSION      ?= 10.9.9
NODE_ARCH        := $(shell uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')
RUNTIME_IMAGES   += $(NODEJS_REPO):20 $(NODEJS_REPO):22
# The NATS server the chart runs for asynchronous invocations (async.nats.image; runtime-images/nats).
NATS_IMAGE       ?= $(IMAGE_REGISTRY)/nats:2.10

.PHONY: images images-docker node20 node22

images: $(STAMP)  ## build every image with buildah and smoke-test it (root; installs buildah, debootstrap)
	IMAGE_REGISTRY=$(IMAGE_REGISTRY) PYTHON=$(BIN)/python NODEJS20_VERSION=$(NODEJS20_VERSION) \
	    NODEJS22_VERSION=$(NODEJS22_VERSION) NPM_VERSION=$(NPM_VERSION) scripts/images

images-docker:  ## build every image with Docker on the official python:3.X-slim bases
	$(DOCKER) build -t $(PLATFORM_IMAGE) .
	for v in $(PYTHON_VERSIONS); do \
	    $(DOCKER) build --build-arg BASE_IMAGE=python:$$v-slim -t $(RUNTIME_REPO):$$v runtime-images/python || exit 1; \
	done
	for m in 20:$(NODEJS20_VERSION) 22:$(NODEJS22_VERSION); do \
	    $(DOCKER) build --build-arg NODE_MAJOR=$${m%%:*} --build-arg NODE_VERSION=$${m#*:} \
	        --build-arg NPM_VERSION=$(NPM_VERSION) -f runtime-images/nodejs/Dockerfile \
	        -t $(NODEJS_REPO):$${m%%:*} runtime-images || exit 1; \
	done
	$(DOCKER) build --build-arg BASE_IMAGE=debian:bookworm-slim -t $(NATS_IMAGE) runtime-images/nats

node22:  ## Node.js 22 from the npm registry into .cache/node/22, where `kfn local` finds it (also node20)
node20 node22: node%:
	npm install --prefix .cache/node/$* --no-save --no-package-lock --no-audit --no-fund \
	    node-linux-$(NODE_ARCH)@$(NODEJS$*_VERSION)
	.cache/node/$*/node_modules/.bin/node --version
