# Container images: the platform image (root Dockerfile: `kfn operator` and `kfn gateway`) and a
# runtime image per Python version (runtime-images/python/Dockerfile).
#   make images          build and smoke-test every image with buildah, no Docker needed (CI)
#   make images-docker   build them with Docker on the official python images (for kind)
KFN_VERSION     ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REGISTRY  ?= ghcr.io/kfn-dev
PLATFORM_IMAGE  ?= $(IMAGE_REGISTRY)/kfn:$(KFN_VERSION)
RUNTIME_REPO    ?= $(IMAGE_REGISTRY)/runtime-python
PYTHON_VERSIONS ?= 3.11 3.12 3.13
RUNTIME_IMAGES  := $(foreach v,$(PYTHON_VERSIONS),$(RUNTIME_REPO):$(v))
DOCKER          ?= docker

.PHONY: images images-docker

images: $(STAMP)  ## build every image with buildah and smoke-test it (root; installs buildah, debootstrap)
	IMAGE_REGISTRY=$(IMAGE_REGISTRY) PYTHON=$(BIN)/python scripts/images

images-docker:  ## build every image with Docker on the official python:3.X-slim bases
	$(DOCKER) build -t $(PLATFORM_IMAGE) .
	for v in $(PYTHON_VERSIONS); do \
	    $(DOCKER) build --build-arg BASE_IMAGE=python:$$v-slim -t $(RUNTIME_REPO):$$v runtime-images/python || exit 1; \
	done
