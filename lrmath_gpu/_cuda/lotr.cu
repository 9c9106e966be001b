// LoTR core contraction, batched over layers:  Y[l, t, :] = Z[l, t, :] @ G[l]
//   Z = X_l A (L, t, ra) -- or one (t, ra) shared by all layers when zs = 0 (zs = layer stride of Z)
//   G (L, ra, rb), ra * rb <= 4096: G[l] is staged in shared memory; one thread per output element.
#define LR_LOTR_MAXG 4096
extern "C" __global__ void lr_lotr_core(const float* Z, const float* G, float* Y, long long L, long long t, int ra,
                                        int rb, long long zs) {
    __shared__ float g[LR_LOTR_MAXG];
    const long long l = blockIdx.y;
    for (int k = threadIdx.x; k < ra * rb; k += blockDim.x) g[k] = G[l * ra * rb + k];
    __syncthreads();
    const long long per = t * rb;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < per; k += (long long)blockDim.x * gridDim.x) {
        long long row = k / rb;
        int col = (int)(k % rb);
        const float* z = Z + l * zs + row * ra;
        float acc = 0.0f;
        for (int a = 0; a < ra; ++a) acc += z[a] * g[a * rb + col];
        Y[l * per + k] = acc;
    }
}
