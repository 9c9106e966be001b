// Device helpers shared by several kernel files; lrmath_gpu._cupy.source() prepends this
// (after the counter RNG of lrmath.rng.CUDA_SOURCE) to every .cu file it hands to CuPy.
#ifndef LRMATH_COMMON_CUH
#define LRMATH_COMMON_CUH
// In-place unnormalised Walsh-Hadamard transform of buf[0:N] (N a power of two) in shared
// memory, by the whole block; ends with a __syncthreads().
__device__ void lr_block_fwht(float* buf, int N) {
    for (int h = 1; h < N; h <<= 1) {
        for (int t = threadIdx.x; t < N / 2; t += blockDim.x) {
            int a = (t / h) * 2 * h + (t % h);
            float p = buf[a], q = buf[a + h];
            buf[a] = p + q;
            buf[a + h] = p - q;
        }
        __syncthreads();
    }
}
#endif
