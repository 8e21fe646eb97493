// cuda_emu self-test of cuda/mma.cuh's emulated tensor-core instructions, one warp at a time:
//   * the conversions on their rounding cases (ties, NaN, Inf, overflow);
//   * ldmatrix.x4: every lane's four words against the PTX ISA's rule (lane L gets word L % 4 of
//     row L / 4 of matrix j in d[j]);
//   * one mma_tf32_m16n8k8 and one mma_bf16_m16n8k16 tile on random inputs, the fragments filled
//     by the PTX ISA's tables written out again here (not through mma.cuh's *_pos functions), D
//     against a double-precision reference on inputs rounded by arithmetic (frexp / ldexp), not by
//     the bit tricks of mma.cuh.
// Built and run by tools/cuda_emu/run_tests.sh (linked with the emulator runtime of build.sh).
// Prints one line per check and exits non-zero when any fails.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "mma.cuh"

using convnet::cuda::f32_to_tf32;
using convnet::cuda::ldmatrix_x4;
using convnet::cuda::mma_bf16_m16n8k16;
using convnet::cuda::mma_tf32_m16n8k8;
using convnet::cuda::pack_bf16x2;

namespace {

int failures = 0;
void check(bool ok, const char* what) {
  std::printf("%s  %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// x rounded to `bits` significant bits: ties away from zero (TF32, cvt.rna) or to even (BF16, cvt.rn).
double round_sig(float x, int bits, bool ties_away) {
  if (x == 0.0f || !std::isfinite(x)) return x;
  int e;
  const double m = std::frexp(static_cast<double>(x), &e) * std::ldexp(1.0, bits);  // |m| in [2^(bits-1), 2^bits)
  const double r = ties_away ? std::copysign(std::floor(std::fabs(m) + 0.5), m) : std::nearbyint(m);
  return std::ldexp(r, e - bits);
}
double ref_tf32(float x) { return round_sig(x, 11, true); }
double ref_bf16(float x) { return round_sig(x, 8, false); }

// ---- kernels: one warp each -------------------------------------------------------------------

// S: 4 matrices x 8 rows x 8 words (4 of data, the rest padding: row addresses 16-byte aligned)
__global__ void ldmatrix_kernel(const uint32_t* src, uint32_t* out) {
  __shared__ __align__(16) uint32_t S[4][8][8];
  const int L = threadIdx.x;
  for (int i = L; i < 4 * 8 * 8; i += 32) (&S[0][0][0])[i] = src[i];
  __syncthreads();
  uint32_t d[4];
  ldmatrix_x4(d, &S[L / 8][L % 8][0]);  // lanes 8j .. 8j + 7: rows 0..7 of matrix j
  for (int j = 0; j < 4; ++j) out[L * 4 + j] = d[j];
}

// D (16 x 8) = A (16 x 8) B (8 x 8) + C, all row-major, through the m16n8k8 .tf32 fragments.
__global__ void tf32_kernel(const float* A, const float* B, const float* C, float* D) {
  const int L = threadIdx.x, g = L / 4, t = L % 4;
  // PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4),
  // a3 (g + 8, t + 4); b0 (k = t, n = g), b1 (k = t + 4, n = g); c0 (g, 2t), c1 (g, 2t + 1),
  // c2 (g + 8, 2t), c3 (g + 8, 2t + 1).
  const uint32_t a[4] = {f32_to_tf32(A[g * 8 + t]), f32_to_tf32(A[(g + 8) * 8 + t]), f32_to_tf32(A[g * 8 + t + 4]),
                         f32_to_tf32(A[(g + 8) * 8 + t + 4])};
  const uint32_t b[2] = {f32_to_tf32(B[t * 8 + g]), f32_to_tf32(B[(t + 4) * 8 + g])};
  const int c_at[4] = {g * 8 + 2 * t, g * 8 + 2 * t + 1, (g + 8) * 8 + 2 * t, (g + 8) * 8 + 2 * t + 1};
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = C[c_at[i]];
  mma_tf32_m16n8k8(acc, a, b);
  for (int i = 0; i < 4; ++i) D[c_at[i]] = acc[i];
}

// D (16 x 8) = A (16 x 16) B (16 x 8) + C through the m16n8k16 .bf16 fragments.
__global__ void bf16_kernel(const float* A, const float* B, const float* C, float* D) {
  const int L = threadIdx.x, g = L / 4, t = L % 4;
  // PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type": A's .b32 registers hold
  // (a0, a1) = (g, 2t .. 2t + 1), (a2, a3) = (g + 8, 2t ..), (a4, a5) = (g, 2t + 8 ..),
  // (a6, a7) = (g + 8, 2t + 8 ..); B's (b0, b1) = (k = 2t .. 2t + 1, n = g), (b2, b3) = (k = 2t + 8 ..).
  const uint32_t a[4] = {pack_bf16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
                         pack_bf16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                         pack_bf16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                         pack_bf16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
  const uint32_t b[2] = {pack_bf16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]),
                         pack_bf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
  const int c_at[4] = {g * 8 + 2 * t, g * 8 + 2 * t + 1, (g + 8) * 8 + 2 * t, (g + 8) * 8 + 2 * t + 1};
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = C[c_at[i]];
  mma_bf16_m16n8k16(acc, a, b);
  for (int i = 0; i < 4; ++i) D[c_at[i]] = acc[i];
}

// ---- host -----------------------------------------------------------------------------------

template <typename T>
T* upload(const std::vector<T>& h) {
  void* p = nullptr;
  cudaMalloc(&p, h.size() * sizeof(T));
  cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}
template <typename T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

void check_conversions() {
  const float one = 1.0f;
  // TF32 keeps 10 mantissa bits: 2^-11 is half an ulp at 1. Ties go away from zero.
  check(bits_to_float(f32_to_tf32(1.0f + std::ldexp(1.0f, -11))) == 1.0f + std::ldexp(1.0f, -10), "tf32 tie rounds away (+)");
  check(bits_to_float(f32_to_tf32(-(1.0f + std::ldexp(1.0f, -11)))) == -(1.0f + std::ldexp(1.0f, -10)), "tf32 tie rounds away (-)");
  check(bits_to_float(f32_to_tf32(1.0f + std::ldexp(1.0f, -11) - std::ldexp(1.0f, -23))) == one, "tf32 below the tie rounds down");
  check(bits_to_float(f32_to_tf32(3.4028235e38f)) == INFINITY, "tf32 of FLT_MAX overflows to inf");
  check(bits_to_float(f32_to_tf32(-INFINITY)) == -INFINITY, "tf32 of -inf");
  check(std::isnan(bits_to_float(f32_to_tf32(NAN))), "tf32 of NaN is NaN");
  check((f32_to_tf32(0.1f) & 0x1fffu) == 0, "tf32 clears the 13 low bits");
  // BF16 keeps 7 mantissa bits: 2^-8 is half an ulp at 1. Ties go to even.
  auto lo = [](uint32_t w) { return bits_to_float(w << 16); };
  auto hi = [](uint32_t w) { return bits_to_float(w & 0xffff0000u); };
  check(lo(pack_bf16x2(1.0f + std::ldexp(1.0f, -8), 0.0f)) == 1.0f, "bf16 tie to even (down)");
  check(lo(pack_bf16x2(1.0f + 3 * std::ldexp(1.0f, -8), 0.0f)) == 1.0f + std::ldexp(1.0f, -6), "bf16 tie to even (up)");
  check(lo(pack_bf16x2(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20), 0.0f)) == 1.0f + std::ldexp(1.0f, -7),
        "bf16 above the tie rounds up");
  check(hi(pack_bf16x2(0.0f, -2.5f)) == -2.5f && lo(pack_bf16x2(0.0f, -2.5f)) == 0.0f, "bf16x2: lo in bits 0..15, hi in 16..31");
  check(std::isnan(lo(pack_bf16x2(NAN, 0.0f))) && lo(pack_bf16x2(INFINITY, 0.0f)) == INFINITY, "bf16 of NaN, inf");
  std::mt19937 gen(12345);
  std::normal_distribution<float> normal;
  bool all = true;
  for (int i = 0; i < 20000; ++i) {
    const float x = normal(gen) * std::ldexp(1.0f, static_cast<int>(gen() % 40) - 20);
    all = all && bits_to_float(f32_to_tf32(x)) == static_cast<float>(ref_tf32(x)) &&
          lo(pack_bf16x2(x, 0.0f)) == static_cast<float>(ref_bf16(x));
  }
  check(all, "tf32 / bf16 of 20000 random floats match the frexp/ldexp reference");
}

void check_ldmatrix() {
  std::vector<uint32_t> src(4 * 8 * 8);
  for (size_t i = 0; i < src.size(); ++i) src[i] = 0x1000u * static_cast<uint32_t>(i) + 7u;
  uint32_t* d_src = upload(src);
  uint32_t* d_out = upload(std::vector<uint32_t>(32 * 4, 0));
  ldmatrix_kernel<<<1, 32>>>(d_src, d_out);
  const std::vector<uint32_t> out = download(d_out, 32 * 4);
  bool ok = cudaGetLastError() == cudaSuccess;
  for (int L = 0; L < 32; ++L)
    for (int j = 0; j < 4; ++j) ok = ok && out[L * 4 + j] == src[(j * 8 + L / 4) * 8 + L % 4];
  check(ok, "ldmatrix.x4: lane L, d[j] = word L % 4 of row L / 4 of matrix j");
  cudaFree(d_src);
  cudaFree(d_out);
}

// One random tile: D from the kernel against double(round(A)) double(round(B)) + C.
void check_tile(bool bf16, int trial, std::mt19937& gen) {
  const int K = bf16 ? 16 : 8;
  std::normal_distribution<float> normal;
  std::vector<float> A(16 * K), B(K * 8), C(16 * 8);
  for (float& x : A) x = normal(gen);
  for (float& x : B) x = normal(gen);
  for (float& x : C) x = normal(gen);
  float *dA = upload(A), *dB = upload(B), *dC = upload(C), *dD = upload(std::vector<float>(16 * 8, NAN));
  if (bf16) bf16_kernel<<<1, 32>>>(dA, dB, dC, dD);
  else tf32_kernel<<<1, 32>>>(dA, dB, dC, dD);
  const std::vector<float> D = download(dD, 16 * 8);
  double worst = 0.0, worst_unrounded = 0.0;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double want = C[m * 8 + n], exact = C[m * 8 + n], scale = std::fabs(C[m * 8 + n]);
      for (int k = 0; k < K; ++k) {
        const double a = bf16 ? ref_bf16(A[m * K + k]) : ref_tf32(A[m * K + k]);
        const double b = bf16 ? ref_bf16(B[k * 8 + n]) : ref_tf32(B[k * 8 + n]);
        want += a * b;
        exact += static_cast<double>(A[m * K + k]) * B[k * 8 + n];
        scale += std::fabs(a * b);
      }
      worst = std::max(worst, std::fabs(D[m * 8 + n] - want) / scale);
      worst_unrounded = std::max(worst_unrounded, std::fabs(D[m * 8 + n] - exact) / scale);
    }
  // FP32 sums of K + 1 terms: a few ulp of the scale. The unrounded product is further off by the
  // inputs' rounding (~2^-11 TF32, ~2^-8 BF16 relative), which shows the rounding took place.
  char what[160];
  std::snprintf(what, sizeof what, "%s tile %d: D vs reference of rounded inputs %.1e (< 1e-6), vs unrounded %.1e (> %.0e)",
                bf16 ? "mma_bf16_m16n8k16" : "mma_tf32_m16n8k8", trial, worst, worst_unrounded, bf16 ? 1e-4 : 1e-5);
  check(worst < 1e-6 && worst_unrounded > (bf16 ? 1e-4 : 1e-5), what);
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
  cudaFree(dD);
}

}  // namespace

int main() {
  check_conversions();
  check_ldmatrix();
  std::mt19937 gen(std::random_device{}());
  for (int trial = 0; trial < 4; ++trial) {
    check_tile(false, trial, gen);
    check_tile(true, trial, gen);
  }
  std::printf("mma_check: %d failure(s)\n", failures);
  return failures > 0;
}
