// Philox4x32-10 (Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011), shared by the
// CPU and CUDA backends so both draw the same numbers for the same (seed, counter, element).
//
// Element i of a draw keyed by (seed, counter) is word i % 4 of
//   philox4x32_10(ctr = {lo(i/4), hi(i/4), lo(counter), hi(counter)}, key = {lo(seed), hi(seed)})
// turned into a float in [0, 1) from its top 24 bits. tests/reference.py implements the same thing
// in NumPy and checks it against the published known-answer vectors.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CONVNET_HD __host__ __device__ __forceinline__
#else
#define CONVNET_HD inline
#endif

namespace convnet {

struct Philox4 {
  uint32_t x[4];
};

CONVNET_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

CONVNET_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {  // the key schedule: add the Weyl constants before rounds 2..10
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Four consecutive uniforms in [0, 1): elements 4*block .. 4*block + 3 of the draw (seed, counter).
CONVNET_HD void philox_uniform4(uint64_t seed, uint64_t counter, uint64_t block, float out[4]) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                  static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  for (int j = 0; j < 4; ++j) out[j] = static_cast<float>(r.x[j] >> 8) * (1.0f / 16777216.0f);
}

// Element i alone (for code that visits elements one at a time).
CONVNET_HD float philox_uniform(uint64_t seed, uint64_t counter, uint64_t i) {
  float u[4];
  philox_uniform4(seed, counter, i >> 2, u);
  return u[i & 3];
}

}  // namespace convnet
