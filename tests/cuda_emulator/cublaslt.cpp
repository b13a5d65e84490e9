// cuBLASLt for the CPU emulator of CUDA (libcublasLt.so): the descriptor calls the engine makes
// and cublasLtMatmul, on the CPU, by cuBLASLt's documented definition. Column-major: matrix X
// of layout (rows, cols, ld) holds X(r, c) at X[r + c * ld]. D = alpha op(A) op(B) + beta C
// (+ bias[r] on every column with the BIAS epilogue; the bias in D's type, cuBLASLt's default
// for CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE), op(A) m x k, op(B) k x n, D m x n. The GELU
// epilogues: GELU_AUX[_BIAS] writes that value to the aux buffer and GELU of it (tanh form) to
// D; DGELU writes it times GELU'(aux) to D; the aux buffer in D's type (the default of
// CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE), its leading dimension a multiple of 8. A layout that does not fit the product is refused, as cuBLASLt
// does, with the reason on stderr. Sums are f64, rounded to f32 once: cuBLAS's f32 sums are
// split over tiles and differ from any one order, so the emulator stands for the exact product
// and the tests' tolerances measure the engine's own kernels.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {

typedef int Status;
enum { OK = 0, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum { R_32F = 0, R_16F = 2, R_16BF = 14 };
enum { COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77 };
enum { DESC_TRANSA = 3, DESC_TRANSB = 4, DESC_EPILOGUE = 7, DESC_BIAS_POINTER = 8, DESC_AUX_POINTER = 11, DESC_AUX_LD = 12 };
enum { EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4, EPILOGUE_GELU_AUX = 160, EPILOGUE_GELU_AUX_BIAS = 164, EPILOGUE_DGELU = 192 };

static bool has_bias(int epilogue) { return epilogue == EPILOGUE_BIAS || epilogue == EPILOGUE_GELU_AUX_BIAS; }
static bool has_aux(int epilogue) {
    return epilogue == EPILOGUE_GELU_AUX || epilogue == EPILOGUE_GELU_AUX_BIAS || epilogue == EPILOGUE_DGELU;
}

struct Desc {
    int compute, scale;
    int ta = 0, tb = 0, epilogue = EPILOGUE_DEFAULT;
    const void* bias = nullptr;
    void* aux = nullptr;
    int64_t aux_ld = 0;
};
struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
};
struct Algo {
    uint64_t data[8];
};
struct Heuristic {
    Algo algo;
    size_t workspace;
    Status state;
    float waves;
    int reserved[4];
};

static int handle_token;

Status cublasLtCreate(void** h) {
    *h = &handle_token;
    return OK;
}
Status cublasLtDestroy(void*) { return OK; }
size_t cublasLtGetVersion() { return 130000; }

Status cublasLtMatmulDescCreate(Desc** d, int compute, int scale) {
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_FAST_TF32) return NOT_SUPPORTED;
    *d = new Desc{compute, scale};
    return OK;
}
Status cublasLtMatmulDescDestroy(Desc* d) {
    delete d;
    return OK;
}
Status cublasLtMatmulDescSetAttribute(Desc* d, int attr, const void* buf, size_t size) {
    switch (attr) {
    case DESC_TRANSA:
    case DESC_TRANSB:
    case DESC_EPILOGUE: {
        if (size != 4) return INVALID_VALUE;
        int v;
        memcpy(&v, buf, 4);
        (attr == DESC_TRANSA ? d->ta : attr == DESC_TRANSB ? d->tb : d->epilogue) = v;
        return OK;
    }
    case DESC_BIAS_POINTER:
        if (size != 8) return INVALID_VALUE;
        memcpy(&d->bias, buf, 8);
        return OK;
    case DESC_AUX_POINTER:
        if (size != 8) return INVALID_VALUE;
        memcpy(&d->aux, buf, 8);
        return OK;
    case DESC_AUX_LD:
        if (size != 8) return INVALID_VALUE;
        memcpy(&d->aux_ld, buf, 8);
        return OK;
    default:
        fprintf(stderr, "cuda emulator: cuBLASLt descriptor attribute %d is not emulated\n", attr);
        return NOT_SUPPORTED;
    }
}

Status cublasLtMatrixLayoutCreate(Layout** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (type != R_32F && type != R_16F && type != R_16BF) return NOT_SUPPORTED;
    if (ld < (int64_t)rows) return INVALID_VALUE;
    *l = new Layout{type, rows, cols, ld};
    return OK;
}
Status cublasLtMatrixLayoutDestroy(Layout* l) {
    delete l;
    return OK;
}
Status cublasLtMatrixLayoutSetAttribute(Layout*, int attr, const void* buf, size_t size) {
    fprintf(stderr, "cuda emulator: cuBLASLt layout attribute %d (size %zu) is not emulated\n", attr, size);
    return NOT_SUPPORTED;
}

Status cublasLtMatmulPreferenceCreate(void** p) {
    *p = new int(0);
    return OK;
}
Status cublasLtMatmulPreferenceDestroy(void* p) {
    delete static_cast<int*>(p);
    return OK;
}
Status cublasLtMatmulPreferenceSetAttribute(void*, int, const void*, size_t) { return OK; }

// The shapes must make a product: op(A) m x k, op(B) k x n, C = D m x n.
static bool check(const Desc* d, const Layout* a, const Layout* b, const Layout* c, const Layout* dl) {
    uint64_t m = dl->rows, n = dl->cols;
    uint64_t am = d->ta ? a->cols : a->rows, ak = d->ta ? a->rows : a->cols;
    uint64_t bk = d->tb ? b->cols : b->rows, bn = d->tb ? b->rows : b->cols;
    const char* why = nullptr;
    if (am != m) why = "op(A) does not have D's rows";
    else if (bn != n) why = "op(B) does not have D's columns";
    else if (ak != bk) why = "op(A)'s columns are not op(B)'s rows";
    else if (c->rows != m || c->cols != n || c->ld != dl->ld || c->type != dl->type) why = "C is not D's shape";
    else if (a->type != b->type) why = "A and B have different types";
    else if (dl->type != R_32F && !(dl->type == R_16BF && a->type == R_16BF))
        why = "D is neither f32 nor bf16 from bf16 inputs (the outputs emulated)";
    else if ((d->ta != 0 && d->ta != 1) || (d->tb != 0 && d->tb != 1)) why = "transpose is neither N nor T";
    else if (d->epilogue != EPILOGUE_DEFAULT && !has_bias(d->epilogue) && !has_aux(d->epilogue))
        why = "epilogue not emulated";
    else if (has_aux(d->epilogue) && (d->aux_ld < (int64_t)m || d->aux_ld % 8 != 0))
        why = "the aux leading dimension is below D's rows or not a multiple of 8";
    if (why) fprintf(stderr, "cuda emulator: cuBLASLt refuses the product: %s\n", why);
    return !why;
}

Status cublasLtMatmulAlgoGetHeuristic(void*, Desc* d, Layout* a, Layout* b, Layout* c, Layout* dl, void*, int requested,
                                      Heuristic* results, int* count) {
    *count = 0;
    if (requested < 1 || !check(d, a, b, c, dl)) return INVALID_VALUE;
    memset(&results[0], 0, sizeof(Heuristic));
    *count = 1;
    return OK;
}

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even, as cuBLASLt writes a bf16 D (a NaN stays a quiet NaN).
static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// IEEE half: 1 sign, 5 exponent (bias 15), 10 fraction bits; exponent 0 is subnormal.
static float f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float magnitude = e == 0    ? std::ldexp((float)m, -24)
                      : e == 31 ? (m ? NAN : INFINITY)
                                : std::ldexp((float)(1024 + m), e - 25);
    return h & 0x8000 ? -magnitude : magnitude;
}

// Element (r, c) of a stored matrix as f32.
static float element(const void* base, const Layout* l, int64_t offset) {
    switch (l->type) {
    case R_16BF: return bf16_to_f32(static_cast<const uint16_t*>(base)[offset]);
    case R_16F: return f16_to_f32(static_cast<const uint16_t*>(base)[offset]);
    default: return static_cast<const float*>(base)[offset];
    }
}

// Writes v at `offset` of a D-typed buffer.
static void store(void* base, bool bf16, int64_t offset, float v) {
    if (bf16)
        static_cast<uint16_t*>(base)[offset] = f32_to_bf16(v);
    else
        static_cast<float*>(base)[offset] = v;
}

// GELU's tanh form and its derivative (as src/kernels/cuda/gelu.cu states them).
static float gelu(float x) {
    const float k = 0.7978845608f, a = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(k * (x + a * x * x * x)));
}
static float gelu_grad(float x) {
    const float k = 0.7978845608f, a = 0.044715f;
    float t = tanhf(k * (x + a * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * a * x * x);
}

Status cublasLtMatmul(void*, Desc* d, const float* alpha, const void* A, Layout* a, const void* B, Layout* b,
                      const float* beta, const void* C, Layout* c, void* D, Layout* dl, const Algo*, void*, size_t,
                      void*) {
    if (!check(d, a, b, c, dl)) return INVALID_VALUE;
    if ((has_bias(d->epilogue) && !d->bias) || (has_aux(d->epilogue) && !d->aux)) {
        fprintf(stderr, "cuda emulator: cuBLASLt epilogue %d without its bias or aux pointer\n", d->epilogue);
        return INVALID_VALUE;
    }
    uint64_t m = dl->rows, n = dl->cols, k = d->ta ? a->rows : a->cols;
    // op(A) as m rows of k, op(B)^T as n rows of k: both contiguous in k.
    std::vector<float> ar(m * k), br(n * k);
    for (uint64_t i = 0; i < m; i++)
        for (uint64_t p = 0; p < k; p++)
            ar[i * k + p] = element(A, a, d->ta ? p + i * a->ld : i + p * a->ld);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t p = 0; p < k; p++)
            br[j * k + p] = element(B, b, d->tb ? j + p * b->ld : p + j * b->ld);
    bool bf16_out = dl->type == R_16BF;
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            const float *x = &ar[i * k], *y = &br[j * k];
            double s[4] = {0, 0, 0, 0};
            uint64_t p = 0;
            for (; p + 4 <= k; p += 4)
                for (int q = 0; q < 4; q++) s[q] += (double)x[p + q] * y[p + q];
            for (; p < k; p++) s[p % 4] += (double)x[p] * y[p];
            float v = *alpha * (float)((s[0] + s[1]) + (s[2] + s[3]));
            if (*beta != 0.0f) v += *beta * element(C, c, i + j * c->ld);
            if (has_bias(d->epilogue)) v += element(d->bias, dl, (int64_t)i);
            if (d->epilogue == EPILOGUE_DGELU) v *= gelu_grad(element(d->aux, dl, i + j * d->aux_ld));
            if (d->epilogue == EPILOGUE_GELU_AUX || d->epilogue == EPILOGUE_GELU_AUX_BIAS) {
                store(d->aux, bf16_out, i + j * d->aux_ld, v);
                v = gelu(v);
            }
            store(D, bf16_out, i + j * dl->ld, v);
        }
    return OK;
}

}  // extern "C"
