/* LearnedExit's score and the run state of the rules that look back, a whole step of
 * rows per call (snncutoff/cutoff/learned.py defines the model and holds the torch
 * twin, which gives the same bits; snncutoff/_native/__init__.py loads this with ctypes).
 *
 * Run state, per row (RunState in snncutoff/cutoff/stability.py), [n, 4] float64:
 * the argmax of the last step (-1 before the first), its run length, the gap of the
 * last step and of the step before it. After a step with argmax a and gap g:
 *
 *     run' = (a == last) ? run + 1 : 1,   state' = (a, run', g, gap)
 *
 * Score of a row at its 1-based step s from (run r, gap g, gap before b, the statistics
 * of its cumulative output), its features f_1 .. f_F in the model's order:
 *
 *     z = ((a_1 f_1 + a_2 f_2) + a_3 f_3) + ... + (s / T * a_p + c)
 *
 * with f = g / s (code 0), log r read from the model's table of torch's log (1), r / s (2), g - b (3)
 * or statistic k (4 + k, float32 or float64, widened exactly); a_p the weight of the
 * progress s / T (has_progress = 0: none) and c the constant. Every operation is one
 * IEEE float64 operation in this order, built with -std=c99 (no contraction into fused
 * multiply-adds), so a row's score depends on that row alone, whatever n, and equals
 * the twin's elementwise torch operations bit for bit. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

struct learned_model {
  const int64_t *codes; /* [F] */
  const double *a;      /* [F] weights of the raw features */
  int64_t F;
  double T, a_progress, c;
  int has_progress;
  const double *log_table; /* log r for r = 0 .. log_size - 1 */
  int64_t log_size;
};

/* Scores of n rows whose run state is given: runs, gaps and gaps before with one stride
 * (in elements); the statistics float32 (stats32) or float64; s one step for every row,
 * or s_rows[i] per row (when not NULL). Feature by feature over the rows: the same
 * operations per row as one row at a time. */
void snncutoff_learned_scores(int64_t n, const double *runs, const double *gaps, const double *before,
                              int64_t stride, const void *const *stats, int stats32, double s, const double *s_rows,
                              const struct learned_model *m, double *out) {
  for (int64_t f = 0; f < m->F; ++f) {
    const double a = m->a[f];
    const int64_t code = m->codes[f];
    for (int64_t i = 0; i < n; ++i) {
      const double si = s_rows ? s_rows[i] : s;
      double x;
      if (code == 0) {
        x = gaps[i * stride] / si;
      } else if (code == 1) {
        const double r = runs[i * stride];
        /* runs are whole numbers in [1, T]; anything else (a state carried past T, or one
         * that is not a run state) reads C's own log */
        x = r >= 1.0 && r < (double)m->log_size && r == floor(r) ? m->log_table[(int64_t)r] : log(r);
      } else if (code == 2) {
        x = runs[i * stride] / si;
      } else if (code == 3) {
        x = gaps[i * stride] - before[i * stride];
      } else {
        const void *v = stats[code - 4];
        x = stats32 ? (double)((const float *)v)[i] : ((const double *)v)[i];
      }
      out[i] = f == 0 ? x * a : out[i] + x * a;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const double si = s_rows ? s_rows[i] : s;
    const double shift = m->has_progress ? si / m->T * m->a_progress + m->c : m->c;
    out[i] = m->F ? out[i] + shift : shift;
  }
}

/* The run state [n, 4] of n rows updated in place after a step with argmax and gap
 * (float32 when gap32, else float64). */
void snncutoff_run_state(int64_t n, const int64_t *argmax, const void *gap, int gap32, double *state) {
  for (int64_t i = 0; i < n; ++i) {
    double *st = state + 4 * i;
    const double cur = (double)argmax[i];
    st[1] = cur == st[0] ? st[1] + 1.0 : 1.0;
    st[0] = cur;
    st[3] = st[2];
    st[2] = gap32 ? (double)((const float *)gap)[i] : ((const double *)gap)[i];
  }
}

/* top2.c's row-wise gap and argmax (same library) */
void snncutoff_top2_f32(const float *X, int64_t r0, int64_t r1, int64_t C, float *gap, int64_t *idx);
void snncutoff_top2_f64(const double *X, int64_t r0, int64_t r1, int64_t C, double *gap, int64_t *idx);

/* One on-line step from the cumulative outputs [n, C] (float32 when out32, else float64,
 * finite): their top-2 gap and argmax, the run state updated, then the rows' scores from
 * it. Returns 0, or 1 when scratch memory could not be had (nothing changed then). */
int snncutoff_learned_step(int64_t n, const void *outputs, int64_t C, int out32, double *state,
                           const void *const *stats, int stats32, double s, const double *s_rows,
                           const struct learned_model *m, double *out) {
  int64_t *idx = malloc((size_t)(n > 0 ? n : 1) * sizeof *idx);
  void *gap = malloc((size_t)(n > 0 ? n : 1) * (out32 ? sizeof(float) : sizeof(double)));
  if (!idx || !gap) {
    free(idx);
    free(gap);
    return 1;
  }
  if (out32)
    snncutoff_top2_f32((const float *)outputs, 0, n, C, (float *)gap, idx);
  else
    snncutoff_top2_f64((const double *)outputs, 0, n, C, (double *)gap, idx);
  snncutoff_run_state(n, idx, gap, out32, state);
  snncutoff_learned_scores(n, state + 1, state + 2, state + 3, 4, stats, stats32, s, s_rows, m, out);
  free(idx);
  free(gap);
  return 0;
}
