// Sampled dense-dense product at a fixed index set:  out[e] = sum_j A[rows[e], j] * Bt[cols[e], j]
// A (m, k) and Bt (n, k) row-major, so both operands are read along contiguous rows.
// A group of `lanes` threads (a power of two dividing blockDim.x) computes one entry; partial sums
// are reduced in shared memory (no warp shuffles, so the Numba version also runs in the simulator).
// One launch covers the inner range [j0, j1) and adds to out when `accumulate` is set: the wrapper
// sweeps the inner dimension in slabs small enough that the touched rows of A and Bt stay in L2
// (each operand row is reused by every entry of its row/column within a slab).
extern "C" __global__ void lr_sddmm(const float* A, const float* Bt, const long long* rows,
                                    const long long* cols, float* out, long long nnz, int k, int lanes,
                                    int j0, int j1, int accumulate) {
    __shared__ float part[1024];
    const int groups = blockDim.x / lanes;
    const int g = threadIdx.x / lanes;
    const int lane = threadIdx.x % lanes;
    for (long long e0 = (long long)blockIdx.x * groups; e0 < nnz; e0 += (long long)gridDim.x * groups) {
        long long e = e0 + g;
        float acc = 0.0f;
        if (e < nnz) {
            const float* a = A + rows[e] * (long long)k;
            const float* b = Bt + cols[e] * (long long)k;
            for (int j = j0 + lane; j < j1; j += lanes) acc += a[j] * b[j];
        }
        part[threadIdx.x] = acc;
        __syncthreads();
        for (int s = lanes / 2; s > 0; s >>= 1) {
            if (lane < s) part[threadIdx.x] += part[threadIdx.x + s];
            __syncthreads();
        }
        if (lane == 0 && e < nnz) out[e] = accumulate ? out[e] + part[threadIdx.x] : part[threadIdx.x];
        __syncthreads();
    }
}
