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

/* one merge level: lane l meets lane l ^ h and keeps the top two of both and the
 * first index of the maximum (masks are taken modulo W, so h >= W is harmless) */
#define MERGE(PERM, h)                                                              \
  do {                                                                              \
    const vi perm = PERM(h);                                                        \
    vt a2 = SHUFFLE(a, perm), b2 = SHUFFLE(b, perm);                                \
    vi i2 = SHUFFLE(ia, perm);                                                      \
    vi gt = a2 > a, eq = a2 == a, earlier = i2 < ia;                                \
    vt mn = SEL(gt, a, a2); /* the smaller of the two maxima */                     \
    vi bgt = b2 > b;                                                                \
    vt bb = SEL(bgt, b2, b);                                                        \
    vi keep = mn > bb;                                                              \
    b = SEL(keep, mn, bb);                                                          \
    a = SEL(gt, a2, a);                                                             \
    vi take = gt | (eq & earlier);                                                  \
    ia = (i2 & take) | (ia & ~take);                                                \
  } while (0)

/* lane update with W new values v at positions pos:
 * b = max(b, min(a, v)); a = max(a, v); ia = the position of a's first maximum */
#define UPDATE(v, pos)                                                              \
  do {                                                                              \
    vi m_ = (v) < a;                                                                \
    vt lo_ = SEL(m_, v, a);                                                         \
    m_ = lo_ > b;                                                                   \
    b = SEL(m_, lo_, b);                                                            \
    m_ = (v) > a;                                                                   \
    a = SEL(m_, v, a);                                                              \
    ia = ((pos) & m_) | (ia & ~m_);                                                 \
  } while (0)

/* VT: W lanes of T; VI: W lanes of the same-width integer (comparison masks, indices) */
#define DEFINE_TOP2(NAME, T, I, W, PERM)                                            \
  typedef T NAME##_vt __attribute__((vector_size(W * sizeof(T))));                  \
  typedef I NAME##_vi __attribute__((vector_size(W * sizeof(T))));                  \
  static void NAME(const T *restrict X, int64_t r0, int64_t r1, int64_t C,          \
                   T *restrict gap, int64_t *restrict idx) {                      \
    typedef NAME##_vt vt;                                                           \
    typedef NAME##_vi vi;                                                           \
    vi iota;                                                                        \
    for (int l = 0; l < W; ++l) iota[l] = l;                                        \
    for (int64_t r = r0; r < r1; ++r) {                                             \
      const T *restrict x = X + r * C;                                              \
      vt a, b, v = {0}, ninf;                                                       \
      vi ia = iota, pos = iota, m;                                                  \
      for (int l = 0; l < W; ++l) a[l] = b[l] = ninf[l] = -INFINITY;                \
      int64_t c = 0;                                                                \
      for (; c + W <= C; c += W, pos += W) {                                        \
        memcpy(&v, x + c, sizeof v);                                                \
        UPDATE(v, pos);                                                             \
      }                                                                             \
      if (c < C && C >= W) { /* the last W values again, those already seen masked */ \
        memcpy(&v, x + C - W, sizeof v);                                            \
        pos = iota + (I)(C - W);                                                    \
        m = pos < (I)c;                                                             \
        v = SEL(m, ninf, v);                                                        \
        UPDATE(v, pos);                                                             \
      } else if (c < C) { /* fewer than W values in all: pad with -inf */           \
        for (int l = 0; l < W; ++l) v[l] = c + l < C ? x[c + l] : -INFINITY;        \
        UPDATE(v, pos);                                                             \
      }                                                                             \
      /* merge the lanes pairwise: lane l with lane l ^ h, h = W/2 .. 1 (each   */  \
      /* pair keeps the top two of both and the first index of the maximum)     */  \
      if (W > 8) MERGE(PERM, 8);                                                    \
      MERGE(PERM, 4);                                                               \
      MERGE(PERM, 2);                                                               \
      MERGE(PERM, 1);                                                               \
      T m1 = a[0], m2 = b[0];                                                       \
      I first = ia[0];                                                              \
      gap[r] = m1 - m2;                                                             \
      idx[r] = first;                                                               \
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
DEFINE_TOP2(top2_f32_avx512, float, int32_t, 16, PERM16)
DEFINE_TOP2(top2_f64_avx512, double, int64_t, 8, PERM8)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2")
DEFINE_TOP2(top2_f32_avx2, float, int32_t, 16, PERM16)
DEFINE_TOP2(top2_f64_avx2, double, int64_t, 8, PERM8)
#pragma GCC pop_options
#endif
DEFINE_TOP2(top2_f32_base, float, int32_t, 16, PERM16)
DEFINE_TOP2(top2_f64_base, double, int64_t, 8, PERM8)

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
