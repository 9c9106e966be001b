// Counter RNG fill: the same numbers as lrmath.rng (device functions from lrmath.rng.CUDA_SOURCE,
// prepended by lrmath_gpu._cupy.source()).  One thread per element, grid-stride.
// mode: 0 bits (out_u), 1 uniform (out_f), 2 signs (out_f), 3 integers in [0, high) (out_i),
//       4 normal (out_f; Box-Muller on counters 2i, 2i+1).
extern "C" __global__ void lr_rng_fill(unsigned long long key, long long offset, long long n, int mode,
                                       unsigned long long high, double* out_f, unsigned long long* out_u,
                                       long long* out_i) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n;
         k += (long long)blockDim.x * gridDim.x) {
        lr_u64 c = (lr_u64)(offset + k);
        if (mode == 0) out_u[k] = lr_bits(key, c);
        else if (mode == 1) out_f[k] = lr_uniform(key, c);
        else if (mode == 2) out_f[k] = (double)lr_sign(key, c);
        else if (mode == 3) out_i[k] = lr_integer(key, c, high);
        else out_f[k] = lr_normal(key, c);
    }
}
