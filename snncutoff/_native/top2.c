/* Row-wise top-2 of a contiguous [rows, C] array in one pass: the gap (largest
 * minus second largest, counting repeats, so a tied maximum gives 0) and the index
 * of the largest (first index on ties), as torch.max and torch.topk define them.
 *
 * Each row is read from memory once, W values at a time (GCC vector extensions):
 * lane l keeps the top two of x[l], x[W + l], ... and the index of its first
 * maximum; log2(W) permute-and-merge levels then combine the lanes. Loaded with
 * ctypes by snncutoff/_native/__init__.py, which splits the rows across threads
 * (ctypes releases the GIL). Values must be finite (traces are validated). Needs
 * GCC; elsewhere the optional build is skipped and snncutoff uses plain torch. */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* mask ? x : y for vectors (C has no vector ?:), and a lane permutation */
#define SEL(mask, x, y) ((__typeof__(x))(((vi)(x) & (mask)) | ((vi)(y) & ~(mask))))
#define SHUFFLE(v, perm) __builtin_shuffle(v, perm)
/* lane l -> lane l ^ h as a constant mask (GCC lowers it to one permute) */
#define PERM16(h) {0 ^ (h), 1 ^ (h), 2 ^ (h), 3 ^ (h), 4 ^ (h), 5 ^ (h), 6 ^ (h), 7 ^ (h), \
                   8 ^ (h), 9 ^ (h), 10 ^ (h), 11 ^ (h), 12 ^ (h), 13 ^ (h), 14 ^ (h), 15 ^ (h)}
#define PERM8(h) {0 ^ (h), 1 ^ (h), 2 ^ (h), 3 ^ (h), 4 ^ (h), 5 ^ (h), 6 ^ (h), 7 ^ (h)}

/* lanes of a second vector: the lower halves of x and y side by side */
#define PACK16 {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}
#define PACK8 {0, 1, 2, 3, 8, 9, 10, 11}

/* one merge level of the lane state (A, B, IA): lane l meets lane l ^ h and keeps
 * the top two of both and the first index of the maximum */
#define MERGE(A, B, IA, PERM, h)                                                    \
  do {                                                                              \
    const vi perm_ = PERM(h);                                                       \
    vt a2_ = SHUFFLE(A, perm_), b2_ = SHUFFLE(B, perm_);                            \
    vi i2_ = SHUFFLE(IA, perm_);                                                    \
    vi gt_ = a2_ > A, eq_ = a2_ == A, earlier_ = i2_ < IA;                          \
    vt mn_ = SEL(gt_, A, a2_); /* the smaller of the two maxima */                  \
    vi bgt_ = b2_ > B;                                                              \
    vt bb_ = SEL(bgt_, b2_, B);                                                     \
    vi keep_ = mn_ > bb_;                                                           \
    B = SEL(keep_, mn_, bb_);                                                       \
    A = SEL(gt_, a2_, A);                                                           \
    vi take_ = gt_ | (eq_ & earlier_);                                              \
    IA = (i2_ & take_) | (IA & ~take_);                                             \
  } while (0)

/* lane update of (A, B, IA) with W new values v at positions pos:
 * B = max(B, min(A, v)); A = max(A, v); IA = the position of A's first maximum */
#define UPDATE(A, B, IA, v, pos)                                                    \
  do {                                                                              \
    vi m_ = (v) < A;                                                                \
    vt lo_ = SEL(m_, v, A);                                                         \
    m_ = lo_ > B;                                                                   \
    B = SEL(m_, lo_, B);                                                            \
    m_ = (v) > A;                                                                   \
    A = SEL(m_, v, A);                                                              \
    IA = ((pos) & m_) | (IA & ~m_);                                                 \
  } while (0)

/* the lane state (A, B, IA) of row x: lane l holds the top two of x[l], x[W + l], ...
 * and the index of its first maximum (LANES = W and lane_int = I in the caller) */
#define ROW_LANES(x, A, B, IA)                                                      \
  do {                                                                              \
    vt v_ = {0};                                                                    \
    vi pos_ = iota;                                                                 \
    A = B = ninf;                                                                   \
    IA = iota;                                                                      \
    int64_t c_ = 0;                                                                 \
    for (; c_ + LANES <= C; c_ += LANES, pos_ += LANES) {                           \
      memcpy(&v_, (x) + c_, sizeof v_);                                             \
      UPDATE(A, B, IA, v_, pos_);                                                   \
    }                                                                               \
    if (c_ < C && C >= LANES) { /* the last W values again, those already seen masked */ \
      memcpy(&v_, (x) + C - LANES, sizeof v_);                                      \
      pos_ = iota + (lane_int)(C - LANES);                                          \
      v_ = SEL(pos_ < (lane_int)c_, ninf, v_);                                      \
      UPDATE(A, B, IA, v_, pos_);                                                   \
    } else if (c_ < C) { /* fewer than W values in all: pad with -inf */            \
      for (int l = 0; l < LANES; ++l) v_[l] = c_ + l < C ? (x)[c_ + l] : -INFINITY; \
      UPDATE(A, B, IA, v_, pos_);                                                   \
    }                                                                               \
  } while (0)

/* VT: W lanes of T; VI: W lanes of the same-width integer (comparison masks, indices).
 * Rows go in pairs: after one merge level each, the two half-states share one vector
 * for the remaining levels (row r in lane 0, row r + 1 in lane W / 2). */
#define DEFINE_TOP2(NAME, T, I, W, PERM, PACK)                                      \
  typedef T NAME##_vt __attribute__((vector_size(W * sizeof(T))));                  \
  typedef I NAME##_vi __attribute__((vector_size(W * sizeof(T))));                  \
  static void NAME(const T *restrict X, int64_t r0, int64_t r1, int64_t C,          \
                   T *restrict gap, int64_t *restrict idx) {                        \
    typedef NAME##_vt vt;                                                           \
    typedef NAME##_vi vi;                                                           \
    typedef I lane_int;                                                             \
    enum { LANES = W };                                                             \
    vi iota;                                                                        \
    vt ninf;                                                                        \
    for (int l = 0; l < W; ++l) {                                                   \
      iota[l] = l;                                                                  \
      ninf[l] = -INFINITY;                                                          \
    }                                                                               \
    const vi pack = PACK;                                                           \
    int64_t r = r0;                                                                 \
    for (; r + 1 < r1; r += 2) {                                                    \
      vt a, b, a1, b1;                                                              \
      vi ia, ia1;                                                                   \
      ROW_LANES(X + r * C, a, b, ia);                                               \
      ROW_LANES(X + (r + 1) * C, a1, b1, ia1);                                      \
      MERGE(a, b, ia, PERM, W / 2);                                                 \
      MERGE(a1, b1, ia1, PERM, W / 2);                                              \
      a = __builtin_shuffle(a, a1, pack);                                           \
      b = __builtin_shuffle(b, b1, pack);                                           \
      ia = __builtin_shuffle(ia, ia1, pack);                                        \
      if (W >= 16) MERGE(a, b, ia, PERM, 4);                                        \
      MERGE(a, b, ia, PERM, 2);                                                     \
      MERGE(a, b, ia, PERM, 1);                                                     \
      gap[r] = a[0] - b[0];                                                         \
      idx[r] = ia[0];                                                               \
      gap[r + 1] = a[W / 2] - b[W / 2];                                             \
      idx[r + 1] = ia[W / 2];                                                       \
    }                                                                               \
    if (r < r1) { /* an odd row out: every level on its own */                      \
      vt a, b;                                                                      \
      vi ia;                                                                        \
      ROW_LANES(X + r * C, a, b, ia);                                               \
      for (int h = W / 2; h >= 1; h /= 2) {                                         \
        if (h == 8) MERGE(a, b, ia, PERM, 8);                                       \
        if (h == 4) MERGE(a, b, ia, PERM, 4);                                       \
        if (h == 2) MERGE(a, b, ia, PERM, 2);                                       \
        if (h == 1) MERGE(a, b, ia, PERM, 1);                                       \
      }                                                                             \
      gap[r] = a[0] - b[0];                                                         \
      idx[r] = ia[0];                                                               \
    }                                                                               \
  }

/* Three builds of each kernel: AVX-512, AVX2 and the compiler's baseline, chosen
 * once per call from what the CPU supports (x86-64; elsewhere the baseline only).
 * The vector types must be declared under the target pragma for the compiler to
 * map them onto the wide registers. */
#if defined(__x86_64__)
#define X86_DISPATCH 1
#pragma GCC push_options
#pragma GCC target("avx512f")
DEFINE_TOP2(top2_f32_avx512, float, int32_t, 16, PERM16, PACK16)
DEFINE_TOP2(top2_f64_avx512, double, int64_t, 8, PERM8, PACK8)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2")
DEFINE_TOP2(top2_f32_avx2, float, int32_t, 16, PERM16, PACK16)
DEFINE_TOP2(top2_f64_avx2, double, int64_t, 8, PERM8, PACK8)
#pragma GCC pop_options
#endif
DEFINE_TOP2(top2_f32_base, float, int32_t, 16, PERM16, PACK16)
DEFINE_TOP2(top2_f64_base, double, int64_t, 8, PERM8, PACK8)

/* Which build to run: 0 = the best the CPU supports, 1 = baseline, 2 = AVX2,
 * 3 = AVX-512 (tests force each in turn; a level the CPU lacks is ignored). */
static int forced_level = 0;

int snncutoff_top2_force_level(int level) {
  forced_level = level;
  return level;
}

static int top2_level(void) {
#ifdef X86_DISPATCH
  __builtin_cpu_init();
  int best = __builtin_cpu_supports("avx512f") ? 3 : __builtin_cpu_supports("avx2") ? 2 : 1;
  return forced_level >= 1 && forced_level <= best ? forced_level : best;
#else
  return 1;
#endif
}

#ifdef X86_DISPATCH
#define DEFINE_ENTRY(NAME, T, SUFFIX)                                               \
  void NAME(const T *X, int64_t r0, int64_t r1, int64_t C, T *gap, int64_t *idx) {  \
    switch (top2_level()) {                                                         \
      case 3: SUFFIX##_avx512(X, r0, r1, C, gap, idx); break;                       \
      case 2: SUFFIX##_avx2(X, r0, r1, C, gap, idx); break;                         \
      default: SUFFIX##_base(X, r0, r1, C, gap, idx);                               \
    }                                                                               \
  }
#else
#define DEFINE_ENTRY(NAME, T, SUFFIX)                                               \
  void NAME(const T *X, int64_t r0, int64_t r1, int64_t C, T *gap, int64_t *idx) {  \
    SUFFIX##_base(X, r0, r1, C, gap, idx);                                          \
  }
#endif

DEFINE_ENTRY(snncutoff_top2_f32, float, top2_f32)
DEFINE_ENTRY(snncutoff_top2_f64, double, top2_f64)
