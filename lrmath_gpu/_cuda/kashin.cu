// Kashin quantization kernels (lrmath/kashin/FORMAT.md conventions).

// Centroid coding: codes[k] = index of the centroid of the ascending table nearest to x[k] / scale[k / N];
// a value exactly halfway between two centroids takes the higher index (compare with >= at midpoints).
// A zero scale divides by 1 instead (as lrmath.kashin.quantize's _code_against does).
extern "C" __global__ void lr_centroid_code(const float* x, const float* scale, const float* table, int ntab,
                                            long long n, int N, unsigned char* codes) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n;
         k += (long long)blockDim.x * gridDim.x) {
        float s = scale[k / N];
        float v = x[k] / (s != 0.0f ? s : 1.0f);
        int lo = 0, hi = ntab - 1;              // binary search: number of midpoints <= v
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            float m = (table[mid] + table[mid + 1]) * 0.5f;
            if (v >= m) lo = mid + 1; else hi = mid;
        }
        codes[k] = (unsigned char)lo;
    }
}

__device__ __forceinline__ unsigned int lr_code_at(const unsigned char* packed, long long k, int bits) {
    unsigned int v = 0;
    long long s0 = k * bits;
    for (int j = 0; j < bits; ++j) {
        long long s = s0 + j;
        v |= (unsigned int)((packed[s >> 3] >> (int)(s & 7)) & 1u) << j;
    }
    return v;
}

// Fused decode: w[k] = scale_u[b] * table_u[c_u[k]] (+ scale_v[b] * table_v[c_v[k]] when ADD_V)
// straight from the packed streams (b = k / N); used to decode u and the not-yet-transformed v.
extern "C" __global__ void lr_decode_codes(const unsigned char* packed, const float* scale, const float* table,
                                           int bits, long long n, int N, float* out) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n;
         k += (long long)blockDim.x * gridDim.x) {
        out[k] = scale[k / N] * table[lr_code_at(packed, k, bits)];
    }
}

// Dequantize-and-multiply without the dense weight (x W^T with W = u + Q v block by block):
//   y[t, r] = sum_col  u_hat[r, col] * x[t, col]  +  v_hat[r, col] * xt[t, col]
// where xt = Q^T x on every block of N columns (one transform of the activations, done beforehand)
// and u_hat / v_hat are decoded on the fly from the packed codes (flat code index r * in_pad + col).
// Grid: (out, ceil(t / LR_KT)); each block reduces LR_KT tokens of one output row in shared memory.
#define LR_KT 8
#define LR_KMAXT 256
extern "C" __global__ void lr_kashin_matmul(const float* x, const float* xt, long long t, long long in_pad,
                                            const unsigned char* cu, const unsigned char* cv,
                                            const float* su, const float* sv, const float* tu, const float* tv,
                                            int bu, int bv, int N, long long out, float* y) {
    __shared__ float part[LR_KT][LR_KMAXT];
    const long long r = blockIdx.x;
    const long long t0 = (long long)blockIdx.y * LR_KT;
    float acc[LR_KT];
    for (int a = 0; a < LR_KT; ++a) acc[a] = 0.0f;
    for (long long col = threadIdx.x; col < in_pad; col += blockDim.x) {
        long long k = r * in_pad + col;
        long long b = k / N;
        float wu = su[b] * tu[lr_code_at(cu, k, bu)];
        float wv = sv[b] * tv[lr_code_at(cv, k, bv)];
        for (int a = 0; a < LR_KT; ++a) {
            long long tt = t0 + a;
            if (tt < t) acc[a] += wu * x[tt * in_pad + col] + wv * xt[tt * in_pad + col];
        }
    }
    for (int a = 0; a < LR_KT; ++a) part[a][threadIdx.x] = acc[a];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            for (int a = 0; a < LR_KT; ++a) part[a][threadIdx.x] += part[a][threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x < LR_KT) {
        long long tt = t0 + threadIdx.x;
        if (tt < t) y[tt * out + r] = part[threadIdx.x][0];
    }
}

// One fused truncation iteration of lrmath.kashin.decompose (Lyubarskii-Vershynin), one CUDA block per
// Kashin block of length N (a power of two <= 4096, Q = randomized Hadamard H D / sqrt(N)):
//   lam = clip * ||r||_2 / sqrt(N);  a = clip(r, +-lam);  u += a
//   w = Q^T (r - a) = D H (r - a) / sqrt(N);  b = clip(w, +-lam);  v += b
//   r = Q (w - b) = H D (w - b) / sqrt(N);   rn2 = ||r||_2^2   (for the next lam and the stop rule)
// r, u, v are read once and written once per iteration; both transforms run in shared memory.
#define LR_KS_MAXN 4096
#define LR_KS_MAXT 1024
extern "C" __global__ void lr_kashin_step(float* r, float* u, float* v, float* rn2, long long nblocks, int N,
                                          unsigned long long key, float clip) {
    __shared__ float buf[LR_KS_MAXN];
    __shared__ float red[LR_KS_MAXT];
    const long long b = blockIdx.x;
    if (b >= nblocks) return;
    const long long base = b * N;
    const float inv = 1.0f / sqrtf((float)N);  // not rsqrtf: keep it correctly rounded like the Numba version
    const float lam = clip * sqrtf(rn2[b]) * inv;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        float x = r[base + i];
        float a = fminf(fmaxf(x, -lam), lam);
        u[base + i] += a;
        buf[i] = x - a;
    }
    __syncthreads();
    lr_block_fwht(buf, N);
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        float s = lr_sign(key, (lr_u64)i);
        float w = buf[i] * inv * s;
        float c = fminf(fmaxf(w, -lam), lam);
        v[base + i] += c;
        buf[i] = (w - c) * s;
    }
    __syncthreads();
    lr_block_fwht(buf, N);
    float acc = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        float y = buf[i] * inv;
        r[base + i] = y;
        acc += y * y;
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) rn2[b] = red[0];
}
