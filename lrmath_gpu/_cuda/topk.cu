// Keys: keys[i] = bits(x[i]) & 0x7fffffff (the wrapper's view of |x| as uint32).
// Top-k by magnitude (per row, or global = one row), deterministic: larger |x| first, ties broken
// by the smaller index.  Radix select on the 31-bit key bits(|x|) (monotone for finite floats):
// four 8-bit histogram passes find the k-th largest key T per row; then every element with key > T
// and the first (k - #greater) elements with key == T in index order are written, chunk by chunk,
// at offsets from an exclusive scan of per-chunk counts (no atomics on the output: deterministic).

extern "C" __global__ void lr_radix_hist(const unsigned int* keys, long long rows, long long n, const unsigned int* prefix,
                                         int shift, unsigned int* hist) {
    __shared__ unsigned int h[256];
    const long long row = blockIdx.y;
    for (int t = threadIdx.x; t < 256; t += blockDim.x) h[t] = 0;
    __syncthreads();
    const unsigned int pre = prefix[row];
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x) {
        unsigned int key = keys[row * n + i];
        bool match = (shift == 24) || ((key >> (shift + 8)) == (pre >> (shift + 8)));
        if (match) atomicAdd(&h[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    for (int t = threadIdx.x; t < 256; t += blockDim.x)
        if (h[t]) atomicAdd(&hist[row * 256 + t], h[t]);
}

extern "C" __global__ void lr_select_count(const unsigned int* keys, long long rows, long long n, const unsigned int* thr,
                                           int chunk, long long nchunks, long long* cnt_gt, long long* cnt_eq) {
    const long long row = blockIdx.y;
    const long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (c >= nchunks) return;
    const unsigned int T = thr[row];
    long long gt = 0, eq = 0;
    long long end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
    for (long long i = c * chunk; i < end; ++i) {
        unsigned int key = keys[row * n + i];
        gt += key > T;
        eq += key == T;
    }
    cnt_gt[row * nchunks + c] = gt;
    cnt_eq[row * nchunks + c] = eq;
}

extern "C" __global__ void lr_select_write(const unsigned int* keys, long long rows, long long n, const unsigned int* thr,
                                           const long long* need, int chunk, long long nchunks, const long long* off_gt,
                                           const long long* off_eq, long long kk, long long* out) {
    const long long row = blockIdx.y;
    const long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (c >= nchunks) return;
    const unsigned int T = thr[row];
    const long long nd = need[row];
    long long eq = off_eq[row * nchunks + c];
    long long pos = off_gt[row * nchunks + c] + (eq < nd ? eq : nd);
    long long end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
    for (long long i = c * chunk; i < end; ++i) {
        unsigned int key = keys[row * n + i];
        if (key > T) {
            out[row * kk + pos++] = i;
        } else if (key == T) {
            if (eq < nd) out[row * kk + pos++] = i;
            ++eq;
        }
    }
}
