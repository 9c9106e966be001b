// Kashin quantization kernels (lrmath/kashin/FORMAT.md conventions).

// Centroid coding: codes[k] = index of the centroid of the ascending table nearest to x[k] / scale[k / N];
// a value exactly halfway between two centroids takes the higher index (compare with >= at midpoints).
extern "C" __global__ void lr_centroid_code(const float* x, const float* scale, const float* table, int ntab,
                                            long long n, int N, unsigned char* codes) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n;
         k += (long long)blockDim.x * gridDim.x) {
        float s = scale[k / N];
        float v = s != 0.0f ? x[k] / s : 0.0f;
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
