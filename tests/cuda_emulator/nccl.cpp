// NCCL for the CPU emulator of CUDA (libnccl.so): the calls of src/dist/nccl.rs between the
// processes of one machine, through shared memory. The unique id names a POSIX shared-memory
// segment; it holds a barrier and one staging slot per rank. An all-reduce copies each rank's
// values into its slot, meets, sums the slots in rank order (the same order on every rank, so
// every rank gets the same bits), and meets again before the slots are reused. Device memory
// is host memory here (driver.cpp), and streams run their work at once, so every call is
// complete when it returns.

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

extern "C" {

typedef int ncclResult_t;
enum { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclInvalidUsage = 5 };
enum { ncclFloat32 = 7 };
enum { ncclSum = 0 };

struct ncclUniqueId {
    char internal[128];
};

// Floats per rank's slot: a larger sum goes through in pieces.
static const size_t SLOT_FLOATS = size_t(4) << 20;

struct Shared {
    std::atomic<uint32_t> arrived, generation;
};

struct Comm {
    int rank, size;
    Shared* shared;
    float* slots;
    size_t bytes;
};

static size_t segment_bytes(int size) { return 4096 + size * SLOT_FLOATS * sizeof(float); }

// Every rank waits until all `size` have arrived. The zeroed segment is a valid start.
static void meet(Comm* c) {
    uint32_t gen = c->shared->generation.load();
    if (c->shared->arrived.fetch_add(1) + 1 == (uint32_t)c->size) {
        c->shared->arrived.store(0);
        c->shared->generation.fetch_add(1);
        return;
    }
    while (c->shared->generation.load() == gen) sched_yield();
}

ncclResult_t ncclGetVersion(int* version) {
    *version = 22400;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    static std::atomic<unsigned> made{0};
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    memset(id->internal, 0, sizeof id->internal);
    snprintf(id->internal, sizeof id->internal, "/nanogpt-cuda-emulator-nccl-%d-%u-%ld", (int)getpid(), made++,
             (long)now.tv_nsec);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(Comm** comm, int size, ncclUniqueId id, int rank) {
    if (size < 1 || rank < 0 || rank >= size) return ncclInvalidArgument;
    char name[129];
    memcpy(name, id.internal, 128);
    name[128] = 0;
    int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
    if (fd < 0) return ncclSystemError;
    size_t bytes = segment_bytes(size);
    // Every rank sets the same size; the pages stay unallocated until written.
    if (ftruncate(fd, bytes) != 0) {
        close(fd);
        return ncclSystemError;
    }
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return ncclSystemError;
    Comm* c = new Comm{rank, size, static_cast<Shared*>(m), reinterpret_cast<float*>(static_cast<char*>(m) + 4096),
                       bytes};
    meet(c);
    if (rank == 0) shm_unlink(name);  // every rank has it mapped now
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* c, void*) {
    if (type != ncclFloat32 || op != ncclSum) {
        fprintf(stderr, "cuda emulator: only f32 sums are emulated in ncclAllReduce\n");
        return ncclInvalidUsage;
    }
    const float* in = static_cast<const float*>(send);
    float* out = static_cast<float*>(recv);
    for (size_t start = 0; start < count; start += SLOT_FLOATS) {
        size_t n = count - start < SLOT_FLOATS ? count - start : SLOT_FLOATS;
        memcpy(c->slots + c->rank * SLOT_FLOATS, in + start, n * sizeof(float));
        meet(c);
        for (size_t i = 0; i < n; i++) {
            float s = c->slots[i];
            for (int r = 1; r < c->size; r++) s += c->slots[r * SLOT_FLOATS + i];
            out[start + i] = s;
        }
        meet(c);
    }
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(Comm* c) {
    munmap(c->shared, c->bytes);
    delete c;
    return ncclSuccess;
}
ncclResult_t ncclCommAbort(Comm* c) { return ncclCommDestroy(c); }
ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }
const char* ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "no error" : "NCCL error (emulator)"; }

}  // extern "C"
