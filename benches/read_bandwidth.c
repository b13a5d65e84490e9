// The memory read ceiling that batch-1 decoding runs into: every thread streams its share of a
// 256 MiB buffer (backed by 2 MiB pages where the kernel allows, as the weights are) with
// AVX-512 loads (AVX2 on a CPU without them), 10 times; prints the best GB/s. Decoding's tokens/s times its bytes per token
// (475 MB of f32 weights for GPT-2 124M, 250 MB in bf16, ~135 MB in int8, plus the KV cache at
// depth) can be set against it.
//
// Build and run: gcc -O2 -march=native -fopenmp benches/read_bandwidth.c -o /tmp/read_bandwidth
//                OMP_NUM_THREADS=2 /tmp/read_bandwidth
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    const size_t n = (size_t)256 << 20;
    char *buf = aligned_alloc(2 << 20, n);
    if (!buf) {
        fprintf(stderr, "read_bandwidth: cannot allocate 256 MiB\n");
        return 1;
    }
    madvise(buf, n, MADV_HUGEPAGE);
    memset(buf, 1, n);
    double best = 0;
    float sink = 0;
    for (int rep = 0; rep < 10; rep++) {
        double t = now();
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
            size_t share = n / omp_get_num_threads(), a = share * omp_get_thread_num();
            // Four independent sums: the loads, not an add chain, set the pace.
#ifdef __AVX512F__
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (size_t i = a; i < a + share; i += 256) {
                s0 = _mm512_add_ps(s0, _mm512_load_ps((const float *)(buf + i)));
                s1 = _mm512_add_ps(s1, _mm512_load_ps((const float *)(buf + i + 64)));
                s2 = _mm512_add_ps(s2, _mm512_load_ps((const float *)(buf + i + 128)));
                s3 = _mm512_add_ps(s3, _mm512_load_ps((const float *)(buf + i + 192)));
            }
            total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#else
            __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            for (size_t i = a; i < a + share; i += 128) {
                s0 = _mm256_add_ps(s0, _mm256_load_ps((const float *)(buf + i)));
                s1 = _mm256_add_ps(s1, _mm256_load_ps((const float *)(buf + i + 32)));
                s2 = _mm256_add_ps(s2, _mm256_load_ps((const float *)(buf + i + 64)));
                s3 = _mm256_add_ps(s3, _mm256_load_ps((const float *)(buf + i + 96)));
            }
            float lanes[8];
            _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
            for (int l = 0; l < 8; l++) total += lanes[l];
#endif
        }
        t = now() - t;
        if (n / t / 1e9 > best) best = n / t / 1e9;
        sink += total;
    }
    printf("%d threads: best read %.1f GB/s (checksum %g)\n", omp_get_max_threads(), best, sink);
    return 0;
}
