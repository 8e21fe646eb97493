// PLACEHOLDER (replaced by the blocked GEMM): a correct, simple row-major GEMM.
#include "backend.h"

namespace convnet {
namespace cpu {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; ++i) {
    float* c = C + static_cast<int64_t>(i) * ldc;
    for (int j = 0; j < N; ++j) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    for (int k = 0; k < K; ++k) {
      const float a = alpha * (trans_a ? A[static_cast<int64_t>(k) * lda + i] : A[static_cast<int64_t>(i) * lda + k]);
      for (int j = 0; j < N; ++j)
        c[j] += a * (trans_b ? B[static_cast<int64_t>(j) * ldb + k] : B[static_cast<int64_t>(k) * ldb + j]);
    }
  }
}

}  // namespace cpu
}  // namespace convnet
