// Sketch generated inside the kernel from the seed (S is never stored):
//   Y (s, c) = scale * S^T X,   X (n, c) with arbitrary element strides (sx0, sx1),
//   S[i, j] = lrmath.rng signs (kind 0) or normal (kind 1) at counter i * s + j.
// 16 x 16 output tiles; each block regenerates its S tile per 16-row slab of X into shared memory.
#define LR_TILE 16
extern "C" __global__ void lr_sketch(const float* X, long long n, long long c, long long sx0, long long sx1,
                                     float* Y, long long s, unsigned long long key, int kind, float scale) {
    __shared__ float Ssh[LR_TILE][LR_TILE + 1];
    __shared__ float Xsh[LR_TILE][LR_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;   // tx: column of Y, ty: row of Y
    const long long col = blockIdx.x * (long long)LR_TILE + tx;
    const long long j = blockIdx.y * (long long)LR_TILE + ty;
    float acc = 0.0f;
    for (long long i0 = 0; i0 < n; i0 += LR_TILE) {
        // thread (ty, tx) generates S[i0 + tx, j0 + ty] and loads X[i0 + ty, col]
        long long si = i0 + tx, sj = blockIdx.y * (long long)LR_TILE + ty;
        float sv = 0.0f;
        if (si < n && sj < s) {
            lr_u64 ctr = (lr_u64)(si * s + sj);
            sv = kind == 0 ? lr_sign(key, ctr) : (float)lr_normal(key, ctr);
        }
        Ssh[tx][ty] = sv;
        long long xi = i0 + ty;
        Xsh[ty][tx] = (xi < n && col < c) ? X[xi * sx0 + col * sx1] : 0.0f;
        __syncthreads();
        for (int t = 0; t < LR_TILE; ++t) acc += Ssh[t][ty] * Xsh[t][tx];
        __syncthreads();
    }
    if (j < s && col < c) Y[j * c + col] = acc * scale;
}
