// Bit packing of b-bit codes, lrmath/kashin/FORMAT.md: code k occupies stream bits k*b .. k*b+b-1,
// least significant bit first; stream bit t is bit (t % 8) of byte t / 8.  Padding bits are 0.
// Packing: one thread per output byte (no atomics, deterministic).  Unpacking: one thread per code.
extern "C" __global__ void lr_pack_bits(const unsigned char* codes, unsigned char* out, long long ncodes,
                                        long long nbytes, int bits) {
    for (long long byte = blockIdx.x * (long long)blockDim.x + threadIdx.x; byte < nbytes;
         byte += (long long)blockDim.x * gridDim.x) {
        unsigned int v = 0;
        for (int t = 0; t < 8; ++t) {
            long long s = byte * 8 + t;
            long long k = s / bits;
            if (k < ncodes) v |= (unsigned int)((codes[k] >> (int)(s - k * bits)) & 1u) << t;
        }
        out[byte] = (unsigned char)v;
    }
}

extern "C" __global__ void lr_unpack_bits(const unsigned char* packed, unsigned char* codes, long long ncodes,
                                          int bits) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < ncodes;
         k += (long long)blockDim.x * gridDim.x) {
        unsigned int v = 0;
        long long s0 = k * bits;
        for (int j = 0; j < bits; ++j) {
            long long s = s0 + j;
            v |= (unsigned int)((packed[s >> 3] >> (int)(s & 7)) & 1u) << j;
        }
        codes[k] = (unsigned char)v;
    }
}
