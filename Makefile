# gradnormlorp: build, test and demo.
#
#   make lib     build build/libgradnormlorp.so (Go, c-shared) and copy it
#                into python/gradnormlorp/ so the in-tree package finds it
#   make test    lint + ABI mirror check + go test + the C ABI test + pytest
#   make demo    pip install . into .venv and train a tiny LLaMA for ~2 min
#                (pass options with DEMO_ARGS="--steps 100 --threads 2")
#   make ctest   the C ABI test alone
#   make lint    go vet + staticcheck + ruff (run by make test)
#   make abi     regenerate the header's mirrors (internal/abigen);
#                make abi-check fails if one is stale (run by make test)
#   make fuzz    fuzz the C ABI for FUZZTIME (default 5m; FUZZTIME=30s)
#   make cuda    build the optional CUDA backend (nvcc) next to the library
#   make nvcc    install NVIDIA's compiler wheels matching torch's CUDA into
#                .venv, for `make cuda` on a machine without a CUDA toolkit
#   make bench   CPU step benchmark vs galore-torch and torch AdamW
#                (BENCH_ARGS="--models llama60m --steps 10")
#   make bench-convergence   AdamW, GaLore, APOLLO, APOLLO-Mini, Fira, LoRA and
#                GradNormLoRP on tinyshakespeare, 3 seeds, in two configurations:
#                hidden 128 x 600 steps (bench/out/base, about an hour on 2 cores)
#                and hidden 256 x 300 steps (bench/out/wide, about 1.5 hours);
#                CONVERGENCE_ARGS go to both ("--steps 200 --seeds 1 --methods
#                adamw,gnlp32"), CONVERGENCE_CONFIGS="base" runs one
#   make wheel   dist/gradnormlorp-*-manylinux*.whl: needs no Go or compiler
#                where it is installed (also writes the sdist, which it builds from)
#   make sdist   dist/gradnormlorp-*.tar.gz alone
#   make wheel-test   build the wheel, install it into a fresh venv with no
#                Go or compiler on PATH, train with it
#   make gotch-test   go vet + go test of the Go front end on gotch (gotch/,
#                its own module): prepares libtorch 2.1.2 from the torch wheel
#                first (make libtorch, ~685 MB download once, ~500 MB unpacked)
#   make gotch-demo   train a byte-level MLP with gotch: GradNormLoRP vs AdamW
#                (GOTCH_DEMO_ARGS="-steps 600 -rank 16")
#   make venv    create .venv and install requirements-dev.txt (once)
#   make clean   remove build outputs (keeps .venv; `make distclean` drops it)

SHELL := bash
GO ?= go
PYTHON ?= python3
CXX ?= g++
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-stamp
DEMO_ARGS ?=
BENCH_ARGS ?=
CONVERGENCE_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-requirements-stamp

LIB := build/libgradnormlorp.so
PYLIB := python/gradnormlorp/libgradnormlorp.so
CTEST := tests/c/test_abi
CTEST_SHARDED := tests/c/test_sharded
GO_SRC := $(shell find core capi cuda -type f \( -name '*.go' -o -name '*.c' -o -name '*.h' -o -name '*.cu' \) 2>/dev/null)
CFLAGS_TEST := -std=c99 -O1 -g -Wall -Wextra -Werror -pedantic -Iinclude

# c-shared needs cgo even where the environment turned it off. go-nvml's
# cgo wrappers call NVML functions deprecated in CUDA 13: keep the build
# output to real problems.
export CGO_ENABLED := 1
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: all help venv lib cuda nvcc bench bench-convergence test demo ctest vet gotest pytest check-go header-cxx clean distclean sdist wheel wheel-test

all: lib

help:
	@sed -n '3,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

check-go:
	@command -v $(GO) >/dev/null 2>&1 || { \
	  echo "error: the Go toolchain ('$(GO)') is not on PATH." >&2; \
	  echo "       gradnormlorp's library is written in Go: install Go >= 1.24" >&2; \
	  echo "       (https://go.dev/doc/install) or run make GO=/path/to/go." >&2; \
	  exit 1; }
	@command -v $${CC:-cc} >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || { \
	  echo "error: no C compiler found; cgo (go build -buildmode=c-shared) needs gcc or clang." >&2; \
	  exit 1; }

# ---------------------------------------------------------------- Python venv
venv: $(STAMP)

$(STAMP): requirements-dev.txt
	@if [ ! -x $(VPY) ]; then \
	  echo ">> creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }; \
	fi
	@echo ">> installing requirements-dev.txt into $(VENV) (torch is large: first run takes a few minutes)"
	$(VPY) -m pip install -q -r requirements-dev.txt
	@touch $@

# ---------------------------------------------------------------- library
lib: $(PYLIB)

$(LIB): $(GO_SRC) go.mod go.sum include/gradnormlorp.h | check-go
	@mkdir -p build
	$(GO) build -buildmode=c-shared -o $@ ./capi
	@rm -f build/libgradnormlorp.h

$(PYLIB): $(LIB)
	cp $(LIB) $(PYLIB).tmp && mv -f $(PYLIB).tmp $(PYLIB)  # atomic: running processes keep the old file

# The optional CUDA backend (needs nvcc: CUDA toolkit or the PyPI wheels in
# .venv; see cuda/build.sh). libgradnormlorp.so loads it from beside itself.
cuda:
	bash cuda/build.sh build
	cp build/libgnlp_cuda.so python/gradnormlorp/libgnlp_cuda.so

# nvcc, crt and nvvm wheels of the CUDA release torch was built with
# (nvidia-cuda-runtime, -cublas and -cusolver already come with torch).
nvcc: venv
	@suffix=$$($(VPY) -c 'import torch; v = torch.version.cuda or ""; print(v)'); \
	if [ -z "$$suffix" ]; then echo "error: this torch is CPU-only; install nvcc from a CUDA toolkit instead" >&2; exit 1; fi; \
	major=$${suffix%%.*}; pin="==$$suffix.*"; cu=""; [ "$$major" = 12 ] && cu=-cu12; \
	echo ">> installing nvcc wheels for CUDA $$suffix into $(VENV)"; \
	$(VPY) -m pip install -q --no-deps "nvidia-cuda-nvcc$$cu$$pin" "nvidia-cuda-crt$$cu$$pin" "nvidia-nvvm$$cu$$pin"

# ---------------------------------------------------------------- tests
test: venv lib lint abi-check gotest fuzz-corpus ctest pytest
	@echo ">> make test: all suites passed"

vet: | check-go
	@echo ">> go vet ./..."
	$(GO) vet ./...

gotest: | check-go
	@echo ">> go test ./..."
	$(GO) test ./...

$(CTEST) $(CTEST_SHARDED): tests/c/%: tests/c/%.c include/gradnormlorp.h $(LIB)
	$(CC) $(CFLAGS_TEST) -o $@ $< -Lbuild -lgradnormlorp \
	  -Wl,-rpath,'$$ORIGIN/../../build' -lm -pthread

header-cxx:
	@if command -v $(CXX) >/dev/null 2>&1; then \
	  echo ">> include/gradnormlorp.h compiles as C++"; \
	  $(CXX) -std=c++11 -Wall -Wextra -Werror -fsyntax-only -x c++ include/gradnormlorp.h; \
	else echo ">> $(CXX) not found: skipping the C++ header check"; fi

# The second run makes the Go GC collect at every 1% of heap growth, which
# turns unsafe/cgo pointer misuse inside the library into a crash here.
ctest: $(CTEST) $(CTEST_SHARDED) header-cxx
	@echo ">> C ABI test ($(CTEST))"
	./$(CTEST)
	@echo ">> C ABI test under GC pressure (GOGC=1)"
	GOGC=1 ./$(CTEST)
	@echo ">> C ABI sharded-step test, ranks as threads ($(CTEST_SHARDED))"
	./$(CTEST_SHARDED)
	GOGC=1 ./$(CTEST_SHARDED)

pytest: venv lib
	@echo ">> pytest tests/python"
	@PYTHONPATH=$(CURDIR)/python$${PYTHONPATH:+:$$PYTHONPATH} $(VPY) -m pytest tests/python -q -rs; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests in tests/python" >&2; fi; \
	exit $$rc

# ---------------------------------------------------------------- bench
$(BENCH_STAMP): requirements-bench.txt requirements-dev.txt | venv
	$(VPY) -m pip install -q -r requirements-bench.txt
	@touch $@

bench: $(BENCH_STAMP) lib
	@PYTHONPATH=$(CURDIR)/python$${PYTHONPATH:+:$$PYTHONPATH} $(VPY) bench/step.py $(BENCH_ARGS)

# The two configurations of docs/convergence.md: the base model, and one with
# 3.6x its parameters (as many steps as fit 45 minutes for the main rows).
CONVERGENCE_CONFIGS ?= base wide
CONVERGENCE_base :=
CONVERGENCE_wide := --hidden 256 --steps 300
bench-convergence: $(BENCH_STAMP) lib
	@set -e; for c in $(CONVERGENCE_CONFIGS); do \
	  case $$c in base) extra="$(CONVERGENCE_base)";; wide) extra="$(CONVERGENCE_wide)";; \
	    *) echo "error: unknown CONVERGENCE_CONFIGS entry '$$c' (base, wide)" >&2; exit 2;; esac; \
	  echo ">> convergence, $$c configuration"; \
	  PYTHONPATH=$(CURDIR)/python$${PYTHONPATH:+:$$PYTHONPATH} $(VPY) bench/convergence.py \
	    $$extra --out bench/out/$$c $(CONVERGENCE_ARGS); \
	done

# Per-rank state (LLaMA-1B/7B, world 1/2/8) and measured traffic of a 2-rank gloo FSDP2 run.
.PHONY: bench-sharding
bench-sharding: lib
	@PYTHONPATH=$(CURDIR)/python$${PYTHONPATH:+:$$PYTHONPATH} $(VPY) bench/sharding.py --out bench/results/sharding.md

# ---------------------------------------------------------------- demo
demo: venv | check-go
	@echo ">> pip install . into $(VENV) (builds the Go library, and the CUDA backend where nvcc is found)"
	$(VPY) -m pip install -q .
	@echo ">> python -m gradnormlorp.demo $(DEMO_ARGS)"
	$(VPY) -m gradnormlorp.demo $(DEMO_ARGS)

# ---------------------------------------------------------------- packaging
# `python -m build` writes the sdist, then builds the wheel from it unpacked
# in a temporary folder, so a file missing from MANIFEST.in fails here. The
# Go library is linked against glibc 2.17 by zig (scripts/zigcc); the CUDA
# backend, built where nvcc is found, finds cuBLAS/cuSOLVER/cudart in torch's
# NVIDIA wheels (GNLP_PORTABLE=1, see setup.py). auditwheel retags
# the wheel manylinux and leaves those libraries to torch's wheels.
WHEEL_STAMP := $(VENV)/.wheel-requirements-stamp
WHEEL_BUILD := build/wheel
NVIDIA_LIBS := libcudart.so.* libcublas.so.* libcublasLt.so.* libcusolver.so.*
PKG_VERSION = $(shell cat capi/VERSION)
WHEEL_ENV = PATH="$(abspath $(VENV))/bin:$$PATH"

$(WHEEL_STAMP): requirements-wheel.txt | venv
	$(VPY) -m pip install -q -r requirements-wheel.txt
	@touch $@

# A stale egg-info would add every file its SOURCES.txt lists to the sdist,
# hiding a gap in MANIFEST.in: start without it.
sdist: $(WHEEL_STAMP)
	rm -rf python/gradnormlorp.egg-info
	$(VPY) -m build --sdist --no-isolation --outdir dist .

wheel: $(WHEEL_STAMP) | check-go
	rm -rf $(WHEEL_BUILD) python/gradnormlorp.egg-info dist/gradnormlorp-$(PKG_VERSION)-*.whl
	$(WHEEL_ENV) CC="$(CURDIR)/scripts/zigcc" GNLP_ZIG_PYTHON="$(abspath $(VPY))" GNLP_PORTABLE=1 \
	  $(VPY) -m build --no-isolation --outdir $(WHEEL_BUILD) .
	$(WHEEL_ENV) $(VPY) -m auditwheel repair $(foreach l,$(NVIDIA_LIBS),--exclude '$(l)') -w dist $(WHEEL_BUILD)/*.whl
	cp $(WHEEL_BUILD)/*.tar.gz dist/
	@ls -l dist/gradnormlorp-$(PKG_VERSION)*

wheel-test: wheel
	bash scripts/wheel_test.sh dist/gradnormlorp-$(PKG_VERSION)-*.whl $(VPY)

# ---------------------------------------------------------------- gotch front end
# gotch/ is a Go module of its own, so the root module and `make test` stay
# free of gotch and libtorch. libtorch (CPU) comes from the torch wheel on
# PyPI into GOTCH_CACHE (CI points it at ~/.cache to keep it between runs);
# the CPU-only gotch fork (scripts/fork-gotch.sh) sits where gotch/go.mod's
# replace directive points. The libtorch path is versioned, and -trimpath
# keeps checkout paths out of Go's build cache keys: the C++ wrapper of
# gotch (minutes to compile) is built once per machine.
GOTCH_CACHE ?= $(CURDIR)/.cache/gotch
LIBTORCH := $(GOTCH_CACHE)/libtorch-2.1.2
GOTCH_FORK := .cache/gotch/gotch-v0.9.1-cpu
GOTCH_CORPUS ?= $(firstword $(wildcard ../shared/data/tinyshakespeare.txt) README.md)
GOTCH_DEMO_ARGS ?=
# OMP_WAIT_POLICY=passive: libtorch's OpenMP threads otherwise spin after
# each op and starve the optimizer's goroutines (10x slower steps).
GOTCH_ENV = cd gotch && GOWORK=off GOFLAGS=-trimpath OMP_WAIT_POLICY=passive CGO_ENABLED=1 \
  CGO_CFLAGS="-I$(LIBTORCH)/include" \
  CGO_CXXFLAGS="-I$(LIBTORCH)/include -I$(LIBTORCH)/include/torch/csrc/api/include" \
  CGO_LDFLAGS="-L$(LIBTORCH)/lib -Wl,-rpath,$(LIBTORCH)/lib"

.PHONY: libtorch gotch-fork gotch-test gotch-bench gotch-demo

libtorch:
	PYTHON=$(PYTHON) bash gotch/scripts/libtorch.sh $(GOTCH_CACHE)

gotch-fork: | check-go
	bash gotch/scripts/fork-gotch.sh $(GOTCH_FORK)

gotch-test: libtorch gotch-fork
	@echo ">> gotch/: go vet ./... (the first build compiles gotch's C++ wrapper: minutes)"
	$(GOTCH_ENV) $(GO) vet ./...
	@echo ">> gotch/: go test ./..."
	$(GOTCH_ENV) $(GO) test ./...
	@echo ">> gotch/: go test under GC pressure (GOGC=1: gotch frees tensors from finalizers)"
	$(GOTCH_ENV) GOGC=1 $(GO) test -count=1 ./optim/

# The front end's step against core's on Go copies of the same tensors.
gotch-bench: libtorch gotch-fork
	$(GOTCH_ENV) $(GO) test -run '^$$' -bench . -benchtime 200x ./optim/

gotch-demo: libtorch gotch-fork
	$(GOTCH_ENV) $(GO) run ./cmd/demo -corpus "$(abspath $(GOTCH_CORPUS))" $(GOTCH_DEMO_ARGS)

# ---------------------------------------------------------------- clean
clean:
	rm -rf build dist python/*.egg-info *.egg-info $(PYLIB) python/gradnormlorp/libgnlp_cuda.so $(CTEST) $(CTEST_SHARDED) capi/libgradnormlorp.h
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# ---------------------------------------------------------------- lint, ABI mirrors, fuzz
# staticcheck is pinned (honnef.co/go/tools v0.8.2 = staticcheck 2025.1.x for
# Go 1.26) and installed with `go install` on first use; ruff is pinned in
# requirements-dev.txt, with its rules in ruff.toml.
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(shell $(GO) env GOPATH 2>/dev/null)/bin/staticcheck
RUFF := $(VENV)/bin/ruff
FUZZTIME ?= 5m

.PHONY: lint abi abi-check fuzz fuzz-corpus

$(STATICCHECK): | check-go
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: venv $(STATICCHECK) | check-go
	@echo ">> go vet ./... (and the fuzz harness, -tags gnlpfuzz)"
	$(GO) vet ./...
	$(GO) vet -tags gnlpfuzz ./capi
	@echo ">> staticcheck ./..."
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags gnlpfuzz ./capi
	@echo ">> ruff check python tests bench"
	$(RUFF) check python tests bench

abi: | check-go
	$(GO) run ./internal/abigen

abi-check: | check-go
	@echo ">> mirrors of include/gradnormlorp.h are current"
	$(GO) run ./internal/abigen -check

# Replays the fuzz corpus (seeds and saved crashers) as ordinary tests.
fuzz-corpus: | check-go
	@echo ">> C ABI fuzz corpus"
	$(GO) test -tags gnlpfuzz -run FuzzABI ./capi

fuzz: | check-go
	@echo ">> fuzzing the C ABI for $(FUZZTIME) (a failing input lands in capi/testdata/fuzz/FuzzABI)"
	$(GO) test -tags gnlpfuzz -run '^$$' -fuzz FuzzABI -fuzztime $(FUZZTIME) -parallel 1 ./capi
