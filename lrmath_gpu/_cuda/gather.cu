// Column-row sampling (CRS) gather: As[r, t] = w[t] * A[r, idx[t]],  Bs[t, col] = w[t] * B[idx[t], col]
// (arbitrary element strides in A and B), so A B ~= As @ Bs by one cuBLAS GEMM of inner size c.
extern "C" __global__ void lr_gather_cols(const float* A, long long m, long long sa0, long long sa1,
                                          const long long* idx, const float* w, long long c, float* As) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < m * c;
         k += (long long)blockDim.x * gridDim.x) {
        long long r = k / c, t = k % c;
        As[k] = w[t] * A[r * sa0 + idx[t] * sa1];
    }
}
extern "C" __global__ void lr_gather_rows(const float* B, long long p, long long sb0, long long sb1,
                                          const long long* idx, const float* w, long long c, float* Bs) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < c * p;
         k += (long long)blockDim.x * gridDim.x) {
        long long t = k / p, col = k % p;
        Bs[k] = w[t] * B[idx[t] * sb0 + col * sb1];
    }
}
// Inverse-CDF sampling from the counter RNG: idx[t] = first i with cdf[i] > u_t * cdf[n-1],
// u_t = lrmath.rng uniform at counter t (binary search, one thread per sample).
extern "C" __global__ void lr_sample_cdf(const double* cdf, long long n, long long c, unsigned long long key,
                                         long long offset, long long* idx) {
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < c;
         t += (long long)blockDim.x * gridDim.x) {
        double u = lr_uniform(key, (lr_u64)(offset + t)) * cdf[n - 1];
        long long lo = 0, hi = n - 1;
        while (lo < hi) {
            long long mid = (lo + hi) / 2;
            if (cdf[mid] > u) hi = mid; else lo = mid + 1;
        }
        idx[t] = lo;
    }
}
