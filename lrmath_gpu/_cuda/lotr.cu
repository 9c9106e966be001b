// LoTR core contraction, batched over layers:  Y[l, t, :] = Z[l, t, :] @ G[l]   (Z = X_l A, r <= 64)
// G[l] (r x r) is staged in shared memory; one thread per output element of a tile of rows.
#define LR_LOTR_MAXR 64
extern "C" __global__ void lr_lotr_core(const float* Z, const float* G, float* Y, long long L, long long t, int r) {
    __shared__ float g[LR_LOTR_MAXR * LR_LOTR_MAXR];
    const long long l = blockIdx.y;
    for (int k = threadIdx.x; k < r * r; k += blockDim.x) g[k] = G[l * r * r + k];
    __syncthreads();
    const long long per = (long long)t * r;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < per; k += (long long)blockDim.x * gridDim.x) {
        long long row = k / r;
        int col = (int)(k % r);
        const float* z = Z + l * per + row * r;
        float acc = 0.0f;
        for (int a = 0; a < r; ++a) acc += z[a] * g[a * r + col];
        Y[l * per + k] = acc;
    }
}
