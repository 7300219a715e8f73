// Shared helpers of the chunksft CPU ops: row-major fp32 GEMM on raw pointers, a vectorisable exp,
// and dynamic scheduling on ATen's thread pool.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

// Hot element-wise loops get AVX-512 / AVX2 clones picked at load time (ifunc), so one build runs
// fast on the build machine and still loads on an older CPU. GEMMs dispatch inside the BLAS library.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CHUNKSFT_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CHUNKSFT_SIMD_CLONES
#endif

// Fortran BLAS entry point (LP64), exported by libtorch_cpu on MKL / OpenBLAS builds. Weak, so the
// extension still loads against a torch without it; gemm() then goes through ATen.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's per-thread thread count, C entry point (the lowercase names are the Fortran ones, by reference;
// weak: absent on non-MKL builds). Inside our parallel region MKL would
// otherwise start its own team per small GEMM (nested parallelism), which is ruinous on a busy machine.
extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

namespace chunksft {

// exp(x) for x <= ~88 as a branch-free polynomial that the compiler vectorises (std::exp does not
// vectorise without -ffast-math). Range reduction x = n ln2 + r, |r| <= ln2 / 2, the published Cephes
// expf polynomial for e^r, 2^n assembled in the exponent bits; about 1 ulp. Returns 0 below -87.3
// (where 2^n would underflow the exponent field), which also covers x = -inf. Always inlined: a call
// would stop the loops around it from vectorising (and the clones differ in target from this function).
__attribute__((always_inline)) inline float exp_approx(float x) {
  const float clamped = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = __builtin_floorf(clamped * 1.44269504088896341f + 0.5f);
  // ln2 split in a part exact in float and a remainder, so r = x - n ln2 loses no bits.
  const float r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // A bit cast, not memcpy: inside `omp simd` loops a memcpy'd local is privatised through memory
  // and the loop is not vectorised.
  const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  return x < -87.3f ? 0.0f : p * scale;
}

// Runs fn(i) for i in [0, n) on ATen's intra-op threads, handing out indices one at a time: work
// items of the chunk layouts differ in cost by up to the sequence length, and at::parallel_for
// alone splits ranges statically. Nested parallel regions (the BLAS inside fn) run single-threaded.
template <typename Fn>
void parallel_dynamic(int64_t n, const Fn& fn) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const int previous = MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0;
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  });
}

// C[M, N] = alpha * op(A) @ op(B) + beta * C, all row-major fp32 with leading dimensions lda / ldb /
// ldc (op(X) = X^T when trans_x). beta == 0 never reads C. Calls the BLAS sgemm that libtorch
// exports when it has one (no tensor objects per tile: tiles are small and called often), else at::addmm.
inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS would scale C by beta; keep the same contract.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  if (sgemm_ != nullptr) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major matrix read
    // column-major is its transpose: swap the operands, keep the transpose flags.
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int ia = static_cast<int>(lda), ib = static_cast<int>(ldb), ic = static_cast<int>(ldc);
    sgemm_(&tb, &ta, &m, &n, &k, &alpha, B, &ib, A, &ia, &beta, C, &ic);
    return;
  }
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  auto a = at::from_blob(const_cast<float*>(A), trans_a ? at::IntArrayRef{K, M} : at::IntArrayRef{M, K}, {lda, 1}, opts);
  auto b = at::from_blob(const_cast<float*>(B), trans_b ? at::IntArrayRef{N, K} : at::IntArrayRef{K, N}, {ldb, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  c.addmm_(trans_a ? a.t() : a, trans_b ? b.t() : b, beta, alpha);
}

}  // namespace chunksft
