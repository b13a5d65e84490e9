// The host side of the CPU emulator of CUDA: the driver calls the engine makes (libcuda.so),
// carried out on the CPU. Device memory is host memory, so a device address is a pointer;
// every stream runs its work at once, in the order it is queued, which is one order a GPU may
// run it in. Kernels come from nvrtc.cpp's shared library (the "PTX" names it) and run on
// kernel_runtime.h's fibers. See README.md here.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <mutex>
#include <signal.h>
#include <sys/mman.h>
#include <string>
#include <unordered_map>

extern "C" {

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;

enum {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    INVALID_IMAGE = 200,
    NOT_FOUND = 500,
};

struct dim3 {
    unsigned x, y, z;
};
typedef void (*Trampoline)(void** args, dim3 grid, dim3 block);

struct Module {
    void* library;
};
struct Function {
    Trampoline launch;
};
struct Event {
    std::chrono::steady_clock::time_point at;
};

static int dummy_context, dummy_stream;
static std::mutex lock;
static size_t allocated = 0;
// Each emulated card: sm_90, 16 GiB (tests stay far below).
static const size_t TOTAL_BYTES = size_t(16) << 30;

CUresult cuInit(unsigned) { return SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return SUCCESS;
}
// A node of GPUs, so data-parallel runs can put one rank on each; they share the host's memory.
static const int DEVICES = 8;

CUresult cuDeviceGetCount(int* n) {
    *n = DEVICES;
    return SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal < 0 || ordinal >= DEVICES) return INVALID_VALUE;
    *d = ordinal;
    return SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "nanogpt CUDA emulator (CPU)");
    return SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = TOTAL_BYTES;
    return SUCCESS;
}
CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice) {
    switch (attribute) {
    case 1: *value = 1024; break;            // max threads per block
    case 10: *value = 32; break;             // warp size
    case 13: *value = 1980000; break;        // clock rate, kHz (an H100 SXM's boost)
    case 16: *value = 132; break;            // multiprocessors
    case 75: *value = 9; break;              // compute capability
    case 76: *value = 0; break;
    case 115: *value = 0; break;             // memory pools: no (plain allocations)
    default: *value = 0;
    }
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &dummy_context;
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return SUCCESS; }
CUresult cuCtxSetCurrent(void*) { return SUCCESS; }
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = &dummy_context;
    return SUCCESS;
}
CUresult cuCtxPushCurrent_v2(void*) { return SUCCESS; }
CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = &dummy_context;
    return SUCCESS;
}
CUresult cuCtxSynchronize() { return SUCCESS; }
CUresult cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return SUCCESS;
}

CUresult cuStreamCreate(void** s, unsigned) {
    *s = &dummy_stream;
    return SUCCESS;
}
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) {
    *s = &dummy_stream;
    return SUCCESS;
}
CUresult cuStreamDestroy_v2(void*) { return SUCCESS; }
CUresult cuStreamSynchronize(void*) { return SUCCESS; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return SUCCESS; }
CUresult cuStreamQuery(void*) { return SUCCESS; }

CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{std::chrono::steady_clock::now()};
    return SUCCESS;
}
CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return SUCCESS;
}
CUresult cuEventRecord(void* e, void*) {
    static_cast<Event*>(e)->at = std::chrono::steady_clock::now();
    return SUCCESS;
}
CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
CUresult cuEventSynchronize(void*) { return SUCCESS; }
CUresult cuEventQuery(void*) { return SUCCESS; }
CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    auto d = static_cast<Event*>(end)->at - static_cast<Event*>(start)->at;
    *ms = std::chrono::duration<float, std::milli>(d).count();
    return SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) { return cuEventElapsedTime(ms, start, end); }

// Each allocation ends where an inaccessible page begins (its start 256-byte aligned, as CUDA's
// are), so a kernel or copy that runs past the end of a buffer faults at once; the handler
// below names the buffer. Allocations are tracked: a free of anything else aborts.
static const size_t PAGE = 4096;

struct Allocation {
    size_t bytes;
    char* mapping;
    size_t mapped;
};
static std::unordered_map<uintptr_t, Allocation> allocations;

static void on_fault(int, siginfo_t* info, void*) {
    uintptr_t at = (uintptr_t)info->si_addr;
    // No lock: the faulting thread may hold it, and the process ends here anyway.
    for (auto& [start, a] : allocations)
        if (at >= start && at < start + a.bytes + PAGE) {
            fprintf(stderr,
                    "cuda emulator: access %zu bytes past the end of a %zu-byte device buffer (a kernel or copy "
                    "ran past it)\n",
                    (size_t)(at - start - a.bytes), a.bytes);
            abort();
        }
    fprintf(stderr, "cuda emulator: segmentation fault at %#lx, outside every device buffer\n", (unsigned long)at);
    abort();
}

static void watch_faults() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSEGV, &sa, nullptr);
    });
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    watch_faults();
    std::lock_guard<std::mutex> g(lock);
    if (bytes == 0) return INVALID_VALUE;
    if (allocated + bytes > TOTAL_BYTES) return OUT_OF_MEMORY;
    size_t span = (bytes + 255) / 256 * 256, usable = (span + PAGE - 1) / PAGE * PAGE;
    void* m = mmap(nullptr, usable + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return OUT_OF_MEMORY;
    char* mapping = static_cast<char*>(m);
    mprotect(mapping + usable, PAGE, PROT_NONE);
    char* start = mapping + usable - span;
    // Poisoned, as fresh device memory holds old data: code that reads before writing sees NaNs.
    memset(start, 0xff, bytes);
    allocations[(uintptr_t)start] = Allocation{bytes, mapping, usable + PAGE};
    allocated += bytes;
    *p = (CUdeviceptr)(uintptr_t)start;
    return SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(lock);
    auto it = allocations.find((uintptr_t)p);
    if (it == allocations.end()) {
        fprintf(stderr, "cuda emulator: cuMemFree of %#llx, which is not an allocation\n", p);
        abort();
    }
    allocated -= it->second.bytes;
    munmap(it->second.mapping, it->second.mapped);
    allocations.erase(it);
    return SUCCESS;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(lock);
    *free_bytes = TOTAL_BYTES - allocated;
    *total = TOTAL_BYTES;
    return SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    memset((void*)(uintptr_t)p, v, n);
    return SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(p, v, n); }
CUresult cuMemsetD32_v2(CUdeviceptr p, unsigned v, size_t n) {
    for (size_t i = 0; i < n; i++) ((unsigned*)(uintptr_t)p)[i] = v;
    return SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, void*) { return cuMemsetD32_v2(p, v, n); }
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    memcpy((void*)(uintptr_t)dst, src, n);
    return SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    memcpy(dst, (const void*)(uintptr_t)src, n);
    return SUCCESS;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
    return SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { return cuMemcpyHtoD_v2(d, s, n); }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoH_v2(d, s, n); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoD_v2(d, s, n); }

// "PTX" from this build of the emulator's NVRTC: a line naming the shared library it compiled.
// Anything else (real PTX, or an older build's, from the engine's cache of compiled kernels) is
// refused, so the engine compiles afresh.
static const char MARK[] = "// nanogpt cuda emulator " EMU_BUILD ": ";

CUresult cuModuleLoadData(void** module, const void* image) {
    const char* text = static_cast<const char*>(image);
    if (strncmp(text, MARK, sizeof(MARK) - 1) != 0) return INVALID_IMAGE;  // real PTX
    std::string path(text + sizeof(MARK) - 1);
    while (!path.empty() && (path.back() == '\n' || path.back() == '\0')) path.pop_back();
    void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        fprintf(stderr, "cuda emulator: %s\n", dlerror());
        return INVALID_IMAGE;
    }
    *module = new Module{library};
    return SUCCESS;
}
CUresult cuModuleLoadDataEx(void** m, const void* image, unsigned, void*, void*) { return cuModuleLoadData(m, image); }
CUresult cuModuleUnload(void* m) {
    // The library stays loaded: kernels' thread_local shared memory may still be referenced by
    // threads that ran them.
    delete static_cast<Module*>(m);
    return SUCCESS;
}
CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
    std::string symbol = std::string("emu_launch_") + name;
    void* t = dlsym(static_cast<Module*>(m)->library, symbol.c_str());
    if (!t) return NOT_FOUND;
    *f = new Function{reinterpret_cast<Trampoline>(t)};
    return SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int, void*) {
    *v = 0;
    return SUCCESS;
}
CUresult cuFuncSetAttribute(void*, int, int) { return SUCCESS; }
CUresult cuFuncSetCacheConfig(void*, int) { return SUCCESS; }

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared_bytes, void*, void** params, void** extra) {
    if (extra || shared_bytes) {
        fprintf(stderr, "cuda emulator: launches with dynamic shared memory or `extra` are not emulated\n");
        return INVALID_VALUE;
    }
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return INVALID_VALUE;
    static_cast<Function*>(f)->launch(params, dim3{gx, gy, gz}, dim3{bx, by, bz});
    return SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    *s = e == SUCCESS ? "no error" : "cuda emulator error";
    return SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    *s = e == SUCCESS ? "CUDA_SUCCESS" : "CUDA_ERROR (emulator)";
    return SUCCESS;
}

}  // extern "C"
