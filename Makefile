# msdiff Makefile.
#   make               the library (build/libmsdiff.a) and the program (./msdiff)
#   make check         build and run every test suite (tests/test_*.c)
#   make bench         benchmarks (bench/)
#   make demo          the main job on its built-in default
#   make fuzz          the parsers' fuzz harnesses (tests/fuzz/), FUZZ_SECONDS each
#   make clean
# Options: NO_OMP=1 (no OpenMP), NO_CUDA=1 (skip cuda/ even when nvcc is found),
#          SANITIZE=1 (-fsanitize=address,undefined), CC=..., NVCC=...
# ref/ and tests/ are never built with fast-math flags: they are the oracle and its proof.

CC ?= cc
BUILD ?= build
# -I.: every file names the headers of common/ by their path from the repository root (common/core/...)
CFLAGS_BASE := -std=c11 -O2 -g -Wall -Wextra -pedantic -D_POSIX_C_SOURCE=200809L -I. -MMD -MP
LDLIBS := -lcjson -lpng -lz -lm

# --- OpenMP: used when the compiler accepts it, unless NO_OMP=1 -----------------------------------
ifneq ($(NO_OMP),1)
  OMP_OK := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo yes)
  ifeq ($(OMP_OK),yes)
    CFLAGS_BASE += -fopenmp
    LDFLAGS += -fopenmp
  else
    $(info OpenMP not available with $(CC): building single-threaded)
  endif
else
  # without OpenMP the pragmas are unknown; that is intended, so do not warn about them
  CFLAGS_BASE += -Wno-unknown-pragmas
endif

# --- Sanitizers --------------------------------------------------------------------------------------
ifeq ($(SANITIZE),1)
  CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=address,undefined
endif

# --- CUDA: cuda/*.cu compiled only when nvcc is found, unless NO_CUDA=1 ------------------------------
NVCC ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
CUDA_SRCS := $(wildcard cuda/*.cu)
ifneq ($(NO_CUDA),1)
  ifneq ($(NVCC),)
    ifneq ($(CUDA_SRCS),)
      CUDA_ON := 1
    endif
  endif
endif
ifeq ($(CUDA_ON),1)
  CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
  # sm_90 machine code plus PTX, which the driver compiles for newer GPUs. No --use_fast_math.
  # C++20 (here and in the emulator build) for designated initializers: cuda/backend.cu fills the op table by name.
  NVCCFLAGS := -O3 -std=c++20 -I. -gencode arch=compute_90,code=[sm_90,compute_90] -Xcompiler -Wall -lineinfo -MMD -MP
  CFLAGS_BASE += -DMSD_HAVE_CUDA
  # the static runtime: the program needs only the driver (libcuda) on the machine that runs it
  LDLIBS += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lpthread -lstdc++
  CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/%.o)
endif

# --- The CUDA emulator: the same cuda/*.cu compiled as C++ for the CPU (cuda/emu.h), on every machine,
# so that tests/test_cuda*.c run the CUDA kernels' logic here as well as on a device.
CXX ?= g++
# (no fused multiply-add: the emulator rounds every product and sum, which the tests' bit-for-bit checks
# against ref rely on, whatever the compiler's default)
CUEMU_CXXFLAGS := -std=c++20 -I. -O2 -g -Wall -Wextra -ffp-contract=off -DMSD_CUDA_EMU -MMD -MP -x c++
ifeq ($(SANITIZE),1)
  CUEMU_CXXFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
endif
CUEMU_OBJS := $(patsubst cuda/%,$(BUILD)/cuda-emu/%.o,$(CUDA_SRCS) cuda/emu.cpp)

# --- Check (the test framework) ---------------------------------------------------------------------
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lpthread -lm)

CFLAGS := $(CFLAGS_BASE) $(CFLAGS_EXTRA)
# LDFLAGS_EXTRA: extra link flags (bench/device-check.sh points them at libraries unpacked by hand)
LDFLAGS += $(LDFLAGS_EXTRA)

# --- Sources -------------------------------------------------------------------------------------------
LIB_SRCS := $(filter-out common/cli/msdiff.c,$(wildcard common/*/*.c)) $(wildcard ref/*.c) $(wildcard fast/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(CUDA_OBJS)
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:%.c=$(BUILD)/%)
TEST_UTIL_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(filter-out $(TEST_SRCS),$(wildcard tests/*.c)))

.PHONY: all check run-tests bench demo deps clean fuzz
.SECONDARY:
all: msdiff $(BUILD)/libmsdiff.a

# Objects depend on a stamp of the flags, so changing SANITIZE or NO_OMP rebuilds everything.
FLAGS_STAMP := $(BUILD)/flags.stamp
FLAGS_NOW := $(CC) $(CFLAGS) $(LDFLAGS) $(LDLIBS) CUDA=$(CUDA_ON) $(NVCCFLAGS) $(CUEMU_CXXFLAGS)
$(shell mkdir -p $(BUILD); test "$$(cat $(FLAGS_STAMP) 2>/dev/null)" = "$(FLAGS_NOW)" || echo "$(FLAGS_NOW)" > $(FLAGS_STAMP))

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

# fast/ is the AVX2+FMA backend: only its files get the vector ISA flags (the program checks the CPU
# at run time before using it). No fast-math there either: NaN/Inf must agree with ref/.
FAST_CFLAGS := -O3 -mavx2 -mfma -ffp-contract=off
$(BUILD)/fast/%.o: fast/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FAST_CFLAGS) -c $< -o $@

$(BUILD)/cuda/%.o: cuda/%.cu $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/cuda-emu/%.o: cuda/% $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(CUEMU_CXXFLAGS) -c $< -o $@

$(BUILD)/libmsdiff_cuemu.a: $(CUEMU_OBJS)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/libmsdiff.a: $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

msdiff: $(BUILD)/common/cli/msdiff.o $(BUILD)/libmsdiff.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_UTIL_OBJS) $(BUILD)/libmsdiff.a
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)

# The CUDA suites run twice: on the device (skipped, saying why, where there is none) and on the
# emulated kernels (tests/test_cuda*.c built with -DTEST_CUDA_EMU). The emulated ones run first.
CUDA_TEST_SRCS := $(wildcard tests/test_cuda*.c)
CUEMU_TEST_BINS := $(CUDA_TEST_SRCS:tests/%.c=$(BUILD)/tests/%_emu)
TEST_BINS := $(CUEMU_TEST_BINS) $(TEST_BINS)
$(BUILD)/tests/%_emu.o: tests/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -DTEST_CUDA_EMU -c $< -o $@
$(BUILD)/tests/%_emu: $(BUILD)/tests/%_emu.o $(TEST_UTIL_OBJS) $(BUILD)/libmsdiff_cuemu.a $(BUILD)/libmsdiff.a
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS) -lstdc++

# check and demo first install missing Debian packages (.ci/install-deps), then build in a fresh
# make so that pkg-config sees what was just installed.
deps:
	@./.ci/install-deps

check: deps
	@$(MAKE) --no-print-directory run-tests

# Every suite runs even when an earlier one fails; the target fails if any did. tests/check_docs.sh
# is one of them: references that stay in the repository, and the walkthrough's stops.
DOC_CHECKS := tests/check_docs.sh
run-tests: all $(TEST_BINS)
	@failed=0; for t in $(TEST_BINS) $(DOC_CHECKS); do \
	  echo "== $$t"; $$t || failed=$$((failed + 1)); \
	done; \
	if [ $$failed -ne 0 ]; then echo "make check: $$failed suite(s) FAILED"; exit 1; fi; \
	echo "make check: all $(words $(TEST_BINS) $(DOC_CHECKS)) suites passed"

# The benchmark program (bench/bench.c) links the library like the tests; `make bench` builds and runs
# it with its defaults (about 5 minutes on 2 cores, mostly ref/), BENCH_FLAGS passes options
# (e.g. BENCH_FLAGS="--csv --backends fast").
BENCH_FLAGS ?=
$(BUILD)/bench/bench: $(BUILD)/bench/bench.o $(BUILD)/libmsdiff.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bench: all $(BUILD)/bench/bench
	$(BUILD)/bench/bench $(BENCH_FLAGS)

# The demo: an 8x8 grid of samples from the shipped multistage model (models/README.md), then a short
# multistage training run of its own on Fashion-MNIST and a grid from that. The budget is sized so
# that the whole target stays under 10 minutes on 2 cores; the fastest backend built is picked.
DEMO_STEPS ?= 200
DEMO_BATCH ?= 32
DEMO_SAMPLE_STEPS ?= 18
DEMO_MODEL ?= models/mini-ms-fmnist.safetensors
demo: deps
	@$(MAKE) --no-print-directory all
	@rm -rf demo/run && mkdir -p demo
	./msdiff sample --model $(DEMO_MODEL) --seeds 0-63 --grid demo/shipped-samples.png --sampler heun --steps $(DEMO_SAMPLE_STEPS)
	./msdiff train --preset mini-ms --data fmnist --steps $(DEMO_STEPS) --batch $(DEMO_BATCH) --lr-rampup 1000 --out demo/run --log-seconds 10
	./msdiff sample --model demo/run --seeds 0-63 --grid demo/samples.png --sampler heun --steps $(DEMO_SAMPLE_STEPS)
	@echo
	@echo "demo: demo/shipped-samples.png: 64 samples from $(DEMO_MODEL), trained on 563,200 images (FD 30.1;"
	@echo "      models/README.md). The short run's folder is demo/run (run.json, log.csv, state.safetensors,"
	@echo "      ema.safetensors), its samples demo/samples.png: $(DEMO_STEPS) steps of $(DEMO_BATCH) images is the"
	@echo "      start of training, rough garment shapes. Longer runs: ./msdiff train --help"

# The libFuzzer harnesses of tests/fuzz/ (built with clang, AddressSanitizer and UBSan in build/fuzz/):
# each for FUZZ_SECONDS, or for FUZZ_RUNS inputs when that is set (CI's smoke run). Fails on any finding.
# Besides what make check installs, it needs clang and its runtimes (libclang-rt-14-dev: libFuzzer).
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
fuzz:
	@./.ci/install-deps clang libclang-rt-14-dev
	tests/fuzz/run.sh $(if $(FUZZ_RUNS),--runs $(FUZZ_RUNS),--seconds $(FUZZ_SECONDS))

clean:
	rm -rf $(BUILD) msdiff

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
