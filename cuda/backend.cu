// backend.cu: device memory, the stream, checked calls, and the op table of the CUDA backend.
//
// What differs from ref/backend.c: memory is the device's (cudaMalloc), every op is queued on one
// stream and returns before it has run; download and sync wait for the queue. upload and download
// copy through pageable host memory, so they are synchronous with respect to the host buffer.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>

#include "common/core/rng.h"
#include "cuda.cuh"

namespace MSD_CUDA_NS {

// Uploads of at most this many floats go as a kernel argument (kernel arguments may take 4 KB).
enum { SHORT_UPLOAD = 960 };

static cudaStream_t the_stream; // created by msd_cuda_probe; the emulator ignores it
cudaStream_t stream() { return the_stream; }

void check_at(cudaError_t err, const char *call, const char *file, int line) {
    if (err != cudaSuccess)
        msd_fatal(file, line, "CUDA call %s failed: %s (a device fault poisons the context: rerun "
                  "under compute-sanitizer to find the kernel)", call, cudaGetErrorString(err));
}

float *cu_alloc(size_t n) {
    void *p = NULL;
    if (n > SIZE_MAX / sizeof(float)) return NULL;
    if (cudaMalloc(&p, (n ? n : 1) * sizeof(float)) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky-free allocation error, the caller reports NULL
        return NULL;
    }
    return (float *)p;
}
void cu_release(float *p) {
    if (p) CU_CHECK(cudaFree(p));
}
// A short vector (the per-sample coefficients of a batch) travels as a kernel argument: the launch
// copies it, so the upload is queued like any op and the host need not wait for the stream.
struct short_vec {
    float v[SHORT_UPLOAD];
};
__global__ static void upload_short_kernel(float *dst, short_vec src, int n) {
    CU_FOR(i, (size_t)n) dst[i] = src.v[i];
}
void cu_upload(float *dst, const float *host_src, size_t n) {
    if (n == 0) return;
    if (n <= SHORT_UPLOAD) {
        short_vec s;
        memcpy(s.v, host_src, n * sizeof(float));
        launch("upload_short", upload_short_kernel, 1, CU_THREADS, dst, s, (int)n);
        return;
    }
    // from pageable memory: the copy is staged, and the host buffer may be reused once it returns
    CU_CHECK(cudaMemcpyAsync(dst, host_src, n * sizeof(float), cudaMemcpyHostToDevice, stream()));
    CU_CHECK(cudaStreamSynchronize(stream()));
}
void cu_download(float *host_dst, const float *src, size_t n) {
    CU_CHECK(cudaMemcpyAsync(host_dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream()));
    CU_CHECK(cudaStreamSynchronize(stream()));
}
void cu_copy(float *dst, const float *src, size_t n) {
    if (dst != src)
        CU_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream()));
}

__global__ static void fill_kernel(float *x, float value, size_t n) {
    CU_FOR(i, n) x[i] = value;
}
void cu_fill(float *x, float value, size_t n) {
    if (n) launch("fill", fill_kernel, grid_for(n), CU_THREADS, x, value, n);
}
// The same counter RNG as ref (common/core/rng.h is __host__ __device__); Box-Muller in double, rounded
// once, so the draws are ref's, up to a rare one-ulp difference where CUDA's double log, sin or cos
// (within 2 ulp of the true values) put the double result on the other side of a float rounding.
__global__ static void fill_normal_kernel(float *x, uint64_t seed, uint64_t stream, size_t n) {
    CU_FOR(i, n) x[i] = msd_rng_normal(seed, stream, i);
}
void cu_fill_normal(float *x, uint64_t seed, uint64_t stream, size_t n) {
    if (n) launch("fill_normal", fill_normal_kernel, grid_for(n), CU_THREADS, x, seed, stream, n);
}
void cu_sync(void) { CU_CHECK(cudaStreamSynchronize(stream())); }

// ---------------------------------------------------------------------------------------------------
// The launch profiler (MSD_CUDA_PROFILE=1): an event before and after every kernel; the pairs are
// read back in batches, summed per kernel name, and printed at exit with the wall time since the
// first launch, so that the time between kernels (launch overhead, host work, syncs) shows too.
bool profiling;
#ifndef MSD_CUDA_EMU
enum { PROF_BATCH = 4096, PROF_NAMES = 256 };
static struct prof_pair { const char *name; cudaEvent_t a, b; } prof_pairs[PROF_BATCH];
static int prof_n, prof_events_made;
static struct prof_total { const char *name; double ms; long count; } prof_totals[PROF_NAMES];
static int prof_names;
static double prof_t0 = -1;

static double wall_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}
static void profile_flush(void) {
    for (int i = 0; i < prof_n; i++) {
        float ms = 0;
        CU_CHECK(cudaEventSynchronize(prof_pairs[i].b));
        CU_CHECK(cudaEventElapsedTime(&ms, prof_pairs[i].a, prof_pairs[i].b));
        int k = 0;
        while (k < prof_names && strcmp(prof_totals[k].name, prof_pairs[i].name) != 0) k++;
        if (k == prof_names && prof_names < PROF_NAMES) prof_totals[prof_names++] = {prof_pairs[i].name, 0, 0};
        if (k < PROF_NAMES) prof_totals[k].ms += ms, prof_totals[k].count++;
    }
    prof_n = 0;
}
static void profile_report(void) {
    profile_flush();
    const double wall = wall_ms() - prof_t0;
    double gpu = 0;
    for (int k = 0; k < prof_names; k++) gpu += prof_totals[k].ms;
    std::sort(prof_totals, prof_totals + prof_names,
              [](const prof_total &x, const prof_total &y) { return x.ms > y.ms; });
    fprintf(stderr, "\ncuda profile: %.1f ms of kernels in %.1f ms since the first launch (%.0f%%)\n", gpu, wall,
            100.0 * gpu / wall);
    fprintf(stderr, "%-28s %10s %8s %10s %6s\n", "kernel", "total ms", "count", "mean us", "share");
    for (int k = 0; k < prof_names; k++)
        fprintf(stderr, "%-28s %10.2f %8ld %10.2f %5.1f%%\n", prof_totals[k].name, prof_totals[k].ms,
                prof_totals[k].count, 1e3 * prof_totals[k].ms / prof_totals[k].count, 100.0 * prof_totals[k].ms / gpu);
}
void profile_begin(const char *name) {
    if (prof_t0 < 0) {
        prof_t0 = wall_ms();
        atexit(profile_report);
    }
    if (prof_n == PROF_BATCH) profile_flush();
    prof_pair &p = prof_pairs[prof_n];
    if (prof_n >= prof_events_made) {
        CU_CHECK(cudaEventCreate(&p.a));
        CU_CHECK(cudaEventCreate(&p.b));
        prof_events_made++;
    }
    p.name = name;
    CU_CHECK(cudaEventRecord(p.a, stream()));
}
void profile_end(void) { CU_CHECK(cudaEventRecord(prof_pairs[prof_n++].b, stream())); }
#else
void profile_begin(const char *) {}
void profile_end(void) {}
#endif

// The backend's one scratch buffer (cuda.cuh). Growing it waits for the queued work that may still
// read the old one, then frees it.
static float *scratch_buf;
static size_t scratch_n;
float *cu_scratch(size_t n) {
    if (n > scratch_n) {
        CU_CHECK(cudaStreamSynchronize(stream())); // queued work may still read the old buffer
        if (scratch_buf) CU_CHECK(cudaFree(scratch_buf));
        scratch_buf = NULL;
        void *p = NULL;
        CU_CHECK(cudaMalloc(&p, n * sizeof(float)));
        scratch_buf = (float *)p;
        scratch_n = n;
    }
    return scratch_buf;
}

} // namespace MSD_CUDA_NS

using namespace MSD_CUDA_NS;

// The table, filled by name as ref/backend.c and fast/backend.c fill theirs: each member gets the
// cu_ function of its own name. C++20's designated initializers must follow the struct's declaration
// order, so MSD_BACKEND_OPS out of that order does not compile; backend.h's static assertion checks
// that it names every member.
#define CU_OP(op) .op = cu_##op,
#ifdef MSD_CUDA_EMU
extern "C" const struct msd_backend msd_backend_cuda_emu = {.name = "cuda-emu", MSD_BACKEND_OPS(CU_OP)};
#else
extern "C" const struct msd_backend msd_backend_cuda = {.name = "cuda", MSD_BACKEND_OPS(CU_OP)};

// Whether this machine can run the backend: a CUDA device that can run this build's kernels (sm_90
// code, compute_90 PTX: Hopper or newer), which then gets the backend's stream. On failure, writes why into `why` and returns 0. The answer is
// computed once.
extern "C" int msd_cuda_probe(char *why, size_t len) {
    static int state = -1; // -1 not yet asked, 0 unavailable, 1 ready
    static char reason[512];
    if (state < 0) {
        int count = 0;
        cudaError_t err = cudaGetDeviceCount(&count);
        cudaDeviceProp prop;
        cudaFuncAttributes fa;
        if (err != cudaSuccess) {
            snprintf(reason, sizeof reason, "no usable CUDA device (%s)", cudaGetErrorString(err));
            cudaGetLastError();
            state = 0;
        } else if (count == 0) {
            snprintf(reason, sizeof reason, "no CUDA device on this machine");
            state = 0;
        } else if ((err = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
            snprintf(reason, sizeof reason, "cannot read device 0's properties (%s)", cudaGetErrorString(err));
            cudaGetLastError();
            state = 0;
        } else if ((err = cudaFuncGetAttributes(&fa, fill_kernel)) != cudaSuccess) {
            // the build holds sm_90 code and compute_90 PTX (Makefile): older GPUs cannot run it
            snprintf(reason, sizeof reason, "device 0 (%.200s, compute capability %d.%d) cannot run this build's "
                     "kernels (%s): it was built for compute capability 9.0 (sm_90)", prop.name, prop.major,
                     prop.minor, cudaGetErrorString(err));
            cudaGetLastError();
            state = 0;
        } else if ((err = cudaStreamCreateWithFlags(&the_stream, cudaStreamNonBlocking)) != cudaSuccess) {
            snprintf(reason, sizeof reason, "cannot create a stream on %.200s (%s)", prop.name,
                     cudaGetErrorString(err));
            state = 0;
        } else {
            state = 1;
            const char *p = getenv("MSD_CUDA_PROFILE");
            profiling = p && strcmp(p, "0") != 0;
        }
    }
    if (!state && why && len) snprintf(why, len, "%s", reason);
    return state;
}

// One line about device 0 for benchmark headers: name, multiprocessors, memory, driver and runtime.
extern "C" void msd_cuda_describe(char *buf, size_t len) {
    cudaDeviceProp prop;
    int driver = 0, runtime = 0;
    if (!msd_cuda_probe(NULL, 0) || cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        snprintf(buf, len, "no CUDA device");
        return;
    }
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    snprintf(buf, len, "%s, %d SMs, %.1f GiB, compute capability %d.%d, driver %d.%d, runtime %d.%d",
             prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, prop.major, prop.minor,
             driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
}
#endif
