// Batched randomized Walsh-Hadamard transform on rows of length n = p * q (lrmath.ops 'hadamard').
// Row element (i, j), i < p, j < q sits at i * q + j; the transform acts along i (stride q).
// Forward (apply):   y = H_p (D x) / sqrt(p)      D = random signs, counter = flat index in the row
// Transpose:         y = D (H_p x) / sqrt(p)
// The q x q Haar factor of lrmath.ops is a dense GEMM done by cuBLAS outside these kernels.
//
// Butterfly stages commute (H_p is a Kronecker product of H_2's), so stages with half-width
// h < chunk run in shared memory (one block per (row, j, chunk index)) and stages h >= chunk run
// as global passes (lr_fwht_global_stage), in either order.  chunk <= 4096 (16 KiB of shared memory).
#define LR_FWHT_SHARED 4096

extern "C" __global__ void lr_fwht_shared(float* y, const float* x, long long rows, int p, int q, int chunk,
                                          unsigned long long key, int use_signs, int signs_at_load,
                                          float scale) {
    __shared__ float buf[LR_FWHT_SHARED];
    const long long nchunks = p / chunk;
    const long long blk = blockIdx.x;
    const long long total = rows * q * nchunks;
    if (blk >= total) return;
    const long long row = blk / (q * nchunks);
    const long long rem = blk % (q * nchunks);
    const int j = (int)(rem / nchunks);
    const int ci = (int)(rem % nchunks);
    const long long n = (long long)p * q;
    const long long base = row * n;
    for (int t = threadIdx.x; t < chunk; t += blockDim.x) {
        long long pos = (long long)(ci * chunk + t) * q + j;
        float v = x[base + pos];
        if (use_signs && signs_at_load) v *= lr_sign(key, (lr_u64)pos);
        buf[t] = v;
    }
    __syncthreads();
    lr_block_fwht(buf, chunk);
    for (int t = threadIdx.x; t < chunk; t += blockDim.x) {
        long long pos = (long long)(ci * chunk + t) * q + j;
        float v = buf[t] * scale;
        if (use_signs && !signs_at_load) v *= lr_sign(key, (lr_u64)pos);
        y[base + pos] = v;
    }
}

// One butterfly stage of half-width h (in place) over all rows and columns j: one thread per pair.
extern "C" __global__ void lr_fwht_global_stage(float* y, long long rows, int p, int q, int h) {
    const long long pairs = rows * (long long)q * (p / 2);
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < pairs;
         k += (long long)blockDim.x * gridDim.x) {
        long long row = k / ((long long)q * (p / 2));
        long long rem = k % ((long long)q * (p / 2));
        int t = (int)(rem / q);
        int j = (int)(rem % q);
        long long a = (long long)((t / h) * 2 * h + (t % h));
        long long ia = row * (long long)p * q + a * q + j;
        long long ib = ia + (long long)h * q;
        float u = y[ia], w = y[ib];
        y[ia] = u + w;
        y[ib] = u - w;
    }
}
