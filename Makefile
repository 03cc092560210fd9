# deltanet build. Knobs: DEBUG=1 (no optimisation), SAN=address,undefined (sanitizers), OPENMP=0
# (single-threaded), BLAS=0 (no system BLAS: dn_matmul runs its built-in kernel only), CUDA=0 (no
# GPU kernels even where nvcc is found; NVCC=path picks the compiler), CC=clang,
# CFLAGS_EXTRA=..., PREFIX=/usr/local for `make install`.
# Each configuration builds in its own directory (build, build-san, build-noomp, build-debug,
# build-noblas, combined as needed), and a flags stamp rebuilds everything when the compiler or
# flags change, so objects of one configuration never leak into another. Headers are tracked
# (-MMD -MP).
# Targets: all (library + tool), test, bench, run, install, compile_commands.json, format,
# format-check, clean; with CUDA: test-cuda (the GPU cases, under compute-sanitizer too with
# SANITIZE=1) and bench-cuda.

CC      ?= cc
PREFIX  ?= /usr/local
OPENMP  ?= 1
SAN     ?=
DEBUG   ?= 0
BLAS    ?= 1

# What the build, the tests and the default runs need and the machine lacks (OpenBLAS, the text
# corpus) is installed first (tools/install-deps.sh, apt-get as root): this included stamp is
# made before anything else, and make then restarts and finds what was installed.
ifeq ($(filter clean clean-fuzz format format-check,$(MAKECMDGOALS)),)
-include .deps-checked
endif
.deps-checked: tools/install-deps.sh
	@sh tools/install-deps.sh
	@echo '# tools/install-deps.sh ran; delete this file to run it again' > $@

BUILD   := build$(if $(SAN),-san)$(if $(filter 0,$(OPENMP)),-noomp)$(if $(filter 1,$(DEBUG)),-debug)$(if $(filter 0,$(BLAS)),-noblas)
ARCH    := $(shell $(CC) -dumpmachine 2>/dev/null)

CFLAGS_BASE := -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wshadow -Wno-unused-function \
               -fPIC -fvisibility=hidden -g -Iinclude -MMD -MP
ifeq ($(DEBUG),1)
  OPT := -O0
else
  OPT := -O2
endif
KOPT := $(if $(filter 1,$(DEBUG)),-O0,-O3) -ffp-contract=fast
LDLIBS := -lm

ifneq ($(SAN),)
  CFLAGS_BASE += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=$(SAN)
endif

# --- what the machine has -------------------------------------------------------------------
HAVE_OPENMP := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo 1)
ifeq ($(OPENMP),1)
ifeq ($(HAVE_OPENMP),1)
  CFLAGS_BASE += -fopenmp
  LDFLAGS += -fopenmp
  OMP_MSG := yes
else
  OMP_MSG := not found (single-threaded)
endif
else
  OMP_MSG := disabled (OPENMP=0)
endif

# A system BLAS for dn_matmul (src/matmul.c), through pkg-config: OpenBLAS, else BLIS, else any
# CBLAS; the first whose cblas.h compiles and whose cblas_sgemm links. Its cflags go to every
# object, its libs to every link and (as Requires.private) to the installed deltanet.pc.
blas_probe = $(shell pkg-config --exists $(1) 2>/dev/null && \
  echo 'int main(void){cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,1,1,1,1.0f,0,1,0,1,0.0f,0,1);return 0;}' | \
  $(CC) $$(pkg-config --cflags $(1)) -include cblas.h -x c - -o /dev/null $$(pkg-config --libs $(1)) 2>/dev/null && echo $(1))
BLAS_PC :=
ifeq ($(BLAS),0)
  BLAS_MSG := disabled (BLAS=0): built-in kernel
else
  BLAS_PC := $(call blas_probe,openblas)
  ifeq ($(BLAS_PC),)
    BLAS_PC := $(call blas_probe,blis)
  endif
  ifeq ($(BLAS_PC),)
    BLAS_PC := $(call blas_probe,cblas)
  endif
  ifneq ($(BLAS_PC),)
    CFLAGS_BASE += -DDN_HAVE_BLAS $(if $(filter openblas,$(BLAS_PC)),-DDN_BLAS_OPENBLAS) \
                   $(if $(filter blis,$(BLAS_PC)),-DDN_BLAS_BLIS) $(shell pkg-config --cflags $(BLAS_PC))
    LDLIBS += $(shell pkg-config --libs $(BLAS_PC))
    BLAS_MSG := $(BLAS_PC) $(shell pkg-config --modversion $(BLAS_PC)) for dn_matmul (DN_MATMUL=builtin: the built-in kernel; the fused kernels' small products stay in src/cpu/gemm.h)
  else
    BLAS_MSG := not found: built-in kernel (install libopenblas-dev for OpenBLAS)
  endif
endif

ISAS := generic
ifneq ($(findstring x86_64,$(ARCH)),)
  ISAS += avx2 avx512
  CFLAGS_BASE += -DDN_HAVE_X86_KERNELS
endif
ISA_FLAGS_generic :=
ISA_FLAGS_avx2    := -mavx2 -mfma -mf16c
ISA_FLAGS_avx512  := -mavx512f -mavx512vl -mavx2 -mfma -mf16c

# CUDA: the kernels of src/cuda/ when nvcc is found (on the PATH or in /usr/local/cuda), for
# sm_80 (A100), sm_90a (H100/H200, Hopper-only instructions allowed) and PTX for later GPUs;
# linked with the CUDA runtime (libcudart), which loads the driver only when a call needs it, so
# the library runs on a machine without a GPU (the CUDA calls then return DN_ERR_DEVICE).
CUDA ?= 1
comma := ,
NVCC ?= $(shell command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
HAVE_NVCC := $(if $(filter 1,$(CUDA)),$(if $(NVCC),1))
ifeq ($(HAVE_NVCC),1)
  CUDA_HOME   := $(patsubst %/bin/nvcc,%,$(NVCC))
  CUDA_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib))
  CUDA_ARCHS  := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
                 -gencode arch=compute_90,code=compute_90
  NVCC_FLAGS  := -std=c++17 -O3 -g -lineinfo -Iinclude $(CUDA_ARCHS) -Xcompiler -fPIC,-fvisibility=hidden,-Wall \
                 $(foreach s,$(subst $(comma), ,$(SAN)),-Xcompiler -fsanitize=$(s)) $(NVCC_EXTRA)
  LDLIBS      += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart -lstdc++
  CUDA_MSG    := $(NVCC) ($(shell $(NVCC) --version 2>/dev/null | grep -o 'release [0-9.]*')): GPU kernels for sm_80, sm_90a and PTX
else
  CUDA_MSG    := $(if $(filter 1,$(CUDA)),nvcc not found: no GPU kernels (the CUDA calls return DN_ERR_DEVICE),disabled (CUDA=0): no GPU kernels)
endif
# What this processor runs, probed for every extension the kernels are compiled with (the
# library makes the same checks at run time, src/core.c).
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has_all    = $(if $(strip $(foreach f,$(1),$(if $(filter $(f),$(CPU_FLAGS)),,x))),,1)
CPU_ISA   := $(if $(call has_all,avx512f avx512vl avx2 fma f16c),avx512,$(if $(call has_all,avx2 fma f16c),avx2,generic))

CFLAGS := $(CFLAGS_BASE) $(OPT) $(CFLAGS_EXTRA)

# --- sources ------------------------------------------------------------------------------------
LIB_SRC    := src/core.c src/check.c src/mem.c src/la.c src/attn.c src/mamba.c src/rwkv4.c src/conv.c src/matmul.c \
              src/model/nn.c src/model/model.c src/model/la.c src/model/mamba.c src/model/mamba2.c src/model/rwkv4.c src/model/attn.c src/model/train.c \
              src/model/data.c src/model/sample.c \
              src/model/json.c src/model/fileio.c src/model/safetensors.c src/model/checkpoint.c src/model/hf.c \
              src/model/unicode.c src/model/tokenizer.c \
              src/ref/la.c src/ref/attn.c src/ref/mamba.c src/ref/rwkv4.c src/ref/conv.c src/ref/matmul.c \
              src/cpu/dispatch.c src/cpu/parallel.c
KERNEL_SRC := src/cpu/la.c src/cpu/la_bwd.c src/cpu/attn.c src/cpu/attn_bwd.c src/cpu/probe.c src/cpu/mamba.c src/cpu/rwkv4.c \
              src/cpu/conv.c src/cpu/matmul.c
CUDA_SRC   := src/cuda/device.cu src/cuda/la.cu src/cuda/la_bwd.cu
LIB_OBJ    := $(LIB_SRC:%.c=$(BUILD)/%.o) \
              $(foreach isa,$(ISAS),$(KERNEL_SRC:%.c=$(BUILD)/%_$(isa).o)) \
              $(if $(HAVE_NVCC),$(CUDA_SRC:%.cu=$(BUILD)/%.o),$(BUILD)/src/cuda_none.o)

# Rebuild everything when the compiler or the flags change (a stamp holding them).
FLAGS_NOW := $(CC) $(CFLAGS) | $(KOPT) | $(LDFLAGS) | $(NVCC_FLAGS)
STAMP     := $(BUILD)/.flags
$(shell mkdir -p $(BUILD); [ "$$(cat $(STAMP) 2>/dev/null)" = '$(FLAGS_NOW)' ] || printf '%s' '$(FLAGS_NOW)' > $(STAMP))

STATIC := $(BUILD)/libdeltanet.a
SHARED := $(BUILD)/libdeltanet.so
TOOL   := $(BUILD)/deltanet
TEST   := $(BUILD)/test_deltanet

.PHONY: all test bench run install clean info format format-check fuzz-bounded shared print-shared test-python test-cuda bench-cuda
all: info $(STATIC) $(SHARED) $(TOOL) $(TEST)

# The shared library alone (the Python package's build runs this) and where it lands.
shared: info $(SHARED)
print-shared:
	@echo $(SHARED)

info:
	@echo "deltanet build: CC=$(CC) ($(ARCH)), kernels: $(ISAS), this CPU: $(CPU_ISA), OpenMP: $(OMP_MSG)"
	@echo "  BLAS: $(BLAS_MSG)"
	@echo "  CUDA: $(CUDA_MSG)"
	@echo "  build dir: $(BUILD)$(if $(SAN), (sanitizers: $(SAN)))$(if $(filter 1,$(DEBUG)), (debug))"

$(BUILD)/src/%.o: src/%.c $(STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/src/cuda/%.o: src/cuda/%.cu src/cuda/cuda_common.h src/cuda/la_common.cuh src/cuda/mma.cuh include/deltanet.h $(STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

# The reference is the math as written: no contraction of a*b+c into FMAs.
$(BUILD)/src/ref/%.o: src/ref/%.c $(STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -ffp-contract=off -c $< -o $@

define KERNEL_RULE
$(BUILD)/src/cpu/%_$(1).o: src/cpu/%.c $(STAMP)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS_BASE) $$(CFLAGS_EXTRA) $$(KOPT) $$(ISA_FLAGS_$(1)) -DDN_ISA_SUFFIX=$(1) -c $$< -o $$@
endef
$(foreach isa,$(ISAS),$(eval $(call KERNEL_RULE,$(isa))))

$(STATIC): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.c $(STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ibench -Itests -Itools -c $< -o $@

TOOL_OBJ := $(BUILD)/tools/opts.o $(BUILD)/tools/compare.o $(BUILD)/tools/train.o $(BUILD)/tools/recall.o $(BUILD)/tools/generate.o $(BUILD)/tools/run.o $(BUILD)/tools/svg.o $(BUILD)/bench/machine.o

$(TOOL): $(BUILD)/tools/deltanet.o $(TOOL_OBJ) $(BUILD)/bench/la.o $(BUILD)/bench/attn.o $(BUILD)/bench/ssm.o $(BUILD)/bench/bwd.o $(BUILD)/bench/model.o $(BUILD)/bench/qwen.o $(BUILD)/bench/matmul.o $(STATIC)
	$(CC) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(TEST): $(BUILD)/tests/test_cuda.o $(BUILD)/tests/test_main.o $(BUILD)/tests/fuzz/fuzz.o $(BUILD)/tests/fuzz/fuzz_files.o $(BUILD)/tests/test_faults.o $(BUILD)/tests/test_la.o $(BUILD)/tests/test_attn.o $(BUILD)/tests/test_ssm.o $(BUILD)/tests/test_compare.o $(BUILD)/tests/test_la_bwd.o $(BUILD)/tests/test_bwd_ssm.o $(BUILD)/tests/test_contract.o $(BUILD)/tests/test_matmul.o $(BUILD)/tests/test_files.o $(BUILD)/tests/test_tokenizer.o $(BUILD)/tests/test_model.o $(BUILD)/tests/model_ref.o $(BUILD)/tests/test_train.o $(BUILD)/tests/test_hf.o $(TOOL_OBJ) $(STATIC)
	$(CC) -o $@ $^ $(LDFLAGS) $(LDLIBS)

# Under AddressSanitizer a failed allocation must come back as NULL (the library's contract is
# to report it as DN_ERR_ALLOC), not abort the process.
TEST_ENV := $(if $(SAN),ASAN_OPTIONS=allocator_may_return_null=1$(if $(ASAN_OPTIONS),:$(ASAN_OPTIONS)))

test: info $(TEST)
	$(TEST_ENV) ./$(TEST)

# The Python package's tests (python/tests): installs the package into the active Python
# (pip install ., which builds the library through `make shared`), then runs pytest.
PYTHON ?= python3
test-python:
	$(PYTHON) -m pip install -q .
	$(PYTHON) -m pytest -q python/tests

# The contract fuzzer's bounded random loop (tests/fuzz) alone (`make test` runs it too;
# DN_FUZZ_ITERS=n for a longer run); `make fuzz` builds the libFuzzer target.
fuzz-bounded: info $(TEST)
	$(TEST_ENV) ./$(TEST) fuzz_bounded

# The GPU cases alone (they skip, saying why, without a device); SANITIZE=1 runs them under
# compute-sanitizer's memcheck and racecheck too, on the small grid (DN_CUDA_TEST_SMALL=1).
test-cuda: info $(TEST)
	./$(TEST) cuda
ifeq ($(SANITIZE),1)
	DN_CUDA_TEST_SMALL=1 compute-sanitizer --tool memcheck --error-exitcode 1 ./$(TEST) cuda
	DN_CUDA_TEST_SMALL=1 compute-sanitizer --tool racecheck --error-exitcode 1 ./$(TEST) cuda
endif

BENCH_CUDA := $(BUILD)/bench_cuda_la
$(BUILD)/bench/cuda_la.o: bench/cuda_la.cu include/deltanet.h $(STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@
$(BENCH_CUDA): $(BUILD)/bench/cuda_la.o $(STATIC)
	$(CC) -o $@ $^ $(LDFLAGS) $(LDLIBS)
bench-cuda: info $(BENCH_CUDA)
	./$(BENCH_CUDA)
	-python3 bench/cuda_la_fla.py

bench: info $(TOOL)
	./$(TOOL) bench
	./$(TOOL) bench attn
	./$(TOOL) bench ssm
	./$(TOOL) bench bwd
	./$(TOOL) bench matmul

# The main job: softmax attention against the linear family, measured here.
run: info $(TOOL)
	./$(TOOL) compare

install: $(STATIC) $(SHARED) $(TOOL)
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/deltanet.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(TOOL) $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|0.1.0|' \
	    -e 's|@LIBS_PRIVATE@|-lm$(if $(filter yes,$(OMP_MSG)), -fopenmp)$(if $(HAVE_NVCC), -L$(CUDA_LIBDIR) -lcudart -lstdc++)|' \
	    -e 's|@REQUIRES_PRIVATE@|$(BLAS_PC)|' deltanet.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/deltanet.pc

# Editor and clang-tidy support: one entry per source file with the flags it is built with.
compile_commands.json: Makefile
	@{ echo '['; sep=''; \
	  for f in $(LIB_SRC) $(wildcard tools/*.c bench/*.c tests/*.c); do \
	    printf '%s{"directory": "%s", "file": "%s", "command": "%s %s -Ibench -Itests -Itools -c %s"}\n' \
	      "$$sep" "$(CURDIR)" "$$f" "$(CC)" "$(CFLAGS)" "$$f"; sep=','; done; \
	  for f in $(KERNEL_SRC); do \
	    printf ',{"directory": "%s", "file": "%s", "command": "%s %s %s %s -DDN_ISA_SUFFIX=avx2 -c %s"}\n' \
	      "$(CURDIR)" "$$f" "$(CC)" "$(CFLAGS_BASE)" "$(KOPT)" "$(ISA_FLAGS_avx2)" "$$f"; done; \
	  echo ']'; } > $@
	@echo "wrote $@"

FORMAT_SRC := $(wildcard include/*.h src/*.c src/*.h src/*/*.c src/*/*.h src/cuda/*.cu src/cuda/*.cuh bench/*.cu tools/*.c tools/*.h bench/*.c bench/*.h tests/*.c tests/*.h tests/*/*.c)
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	clang-format --dry-run -Werror $(FORMAT_SRC)

clean:
	rm -rf build build-* compile_commands.json

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)


# --- fuzzing and ThreadSanitizer (tests/fuzz, tests/tsan): clang only, their own build dirs ----
# make fuzz: build-fuzz/fuzz_deltanet, libFuzzer + ASan + UBSan over the library (same flags);
#   run: DN_FUZZ_FAMILY=la_fwd build-fuzz/fuzz_deltanet -max_total_time=60 (families: fuzz.h;
#   the file parsers' families json and safetensors take -dict=tests/fuzz/files.dict).
# make tsan: build-tsan/concurrency under -fsanitize=thread, then runs it. OpenMP through LLVM's
#   libomp when clang finds it (TSAN_OPENMP=0 builds without).
FUZZ_CC     ?= clang
TSAN_OPENMP ?= 1
CLANG_OMP   := $(shell echo 'int main(void){return 0;}' | $(FUZZ_CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo -fopenmp)
SAN_DEFS    := -std=c11 -D_POSIX_C_SOURCE=200809L -g -O2 -fno-omit-frame-pointer -Iinclude -Itests \
               $(if $(findstring x86_64,$(ARCH)),-DDN_HAVE_X86_KERNELS)

# $(1) dir, $(2) extra flags: library objects (kernels once per ISA) compiled with those flags
define SANLIB_RULES
$(1)/src/%.o: src/%.c $$(STAMP)
	@mkdir -p $$(dir $$@)
	$$(FUZZ_CC) $$(SAN_DEFS) $(2) -c $$< -o $$@
$(1)/src/ref/%.o: src/ref/%.c $$(STAMP)
	@mkdir -p $$(dir $$@)
	$$(FUZZ_CC) $$(SAN_DEFS) $(2) -ffp-contract=off -c $$< -o $$@
$(foreach isa,$(ISAS),
$(1)/src/cpu/%_$(isa).o: src/cpu/%.c $$(STAMP)
	@mkdir -p $$(dir $$@)
	$$(FUZZ_CC) $$(SAN_DEFS) $(2) -ffp-contract=fast $$(ISA_FLAGS_$(isa)) -DDN_ISA_SUFFIX=$(isa) -c $$< -o $$@
)
$(1)/tests/%.o: tests/%.c $$(STAMP) $$(wildcard tests/*.h tests/fuzz/*.h)
	@mkdir -p $$(dir $$@)
	$$(FUZZ_CC) $$(SAN_DEFS) $(2) -c $$< -o $$@
endef

FUZZ_FLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all $(CLANG_OMP)
FUZZ_LIBOBJ := $(LIB_SRC:%.c=build-fuzz/%.o) build-fuzz/src/cuda_none.o $(foreach isa,$(ISAS),$(KERNEL_SRC:%.c=build-fuzz/%_$(isa).o))
$(eval $(call SANLIB_RULES,build-fuzz,$(FUZZ_FLAGS)))

build-fuzz/fuzz_deltanet: build-fuzz/tests/fuzz/fuzz.o build-fuzz/tests/fuzz/fuzz_files.o $(FUZZ_LIBOBJ)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined $(CLANG_OMP) -o $@ $^ -lm

TSAN_OMP   := $(if $(filter 1,$(TSAN_OPENMP)),$(CLANG_OMP))
TSAN_FLAGS := -fsanitize=thread $(TSAN_OMP)
TSAN_LIBOBJ := $(LIB_SRC:%.c=build-tsan/%.o) build-tsan/src/cuda_none.o $(foreach isa,$(ISAS),$(KERNEL_SRC:%.c=build-tsan/%_$(isa).o))
$(eval $(call SANLIB_RULES,build-tsan,$(TSAN_FLAGS)))

build-tsan/concurrency: build-tsan/tests/tsan/concurrency.o $(TSAN_LIBOBJ)
	$(FUZZ_CC) -fsanitize=thread $(TSAN_OMP) -pthread -o $@ $^ -lm

.PHONY: fuzz tsan clean-fuzz
$(BUILD)/tests/fuzz/fuzz.o $(BUILD)/tests/fuzz/fuzz_files.o: tests/fuzz/fuzz.h
clean-fuzz:
	rm -rf build-fuzz build-tsan
fuzz: build-fuzz/fuzz_deltanet
	@echo "fuzz: $(FUZZ_CC), OpenMP: $(if $(CLANG_OMP),libomp,none); run:"
	@echo "  DN_FUZZ_FAMILY=<family> LSAN_OPTIONS=suppressions=tests/fuzz/lsan.supp ASAN_OPTIONS=allocator_may_return_null=1 $< -max_total_time=N"

tsan: build-tsan/concurrency
	@echo "tsan: OpenMP $(if $(TSAN_OMP),on (libomp),off (TSAN_OPENMP=0 or no libomp))"
	TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan/libomp.supp $(TSAN_OPTIONS)" ./build-tsan/concurrency
